"""pytest-benchmark: token_logprobs against its eager composite (cases in fastrlhf/benchmark/cases.py)."""
from fastrlhf.benchmark import pytest_benchmark

test_token_logprobs = pytest_benchmark("token_logprobs")
