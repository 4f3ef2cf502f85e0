"""pytest-benchmark: linear_logprobs against the eager LM head + log_softmax (cases in fastrlhf/benchmark/cases.py)."""
from fastrlhf.benchmark import pytest_benchmark

test_linear_logprobs = pytest_benchmark("linear_logprobs")
