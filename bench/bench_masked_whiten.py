"""pytest-benchmark: masked_whiten against its eager composite (cases in fastrlhf/benchmark/cases.py)."""
from fastrlhf.benchmark import pytest_benchmark

test_masked_whiten = pytest_benchmark("masked_whiten")
