"""pytest-benchmark: kl_penalty against its eager composite (cases in fastrlhf/benchmark/cases.py)."""
from fastrlhf.benchmark import pytest_benchmark

test_kl_penalty = pytest_benchmark("kl_penalty")
