"""pytest-benchmark: masked_mean against its eager composite (cases in fastrlhf/benchmark/cases.py)."""
from fastrlhf.benchmark import pytest_benchmark

test_masked_mean = pytest_benchmark("masked_mean")
