"""pytest-benchmark: gae against its eager composite (cases in fastrlhf/benchmark/cases.py)."""
from fastrlhf.benchmark import pytest_benchmark

test_gae = pytest_benchmark("gae")
