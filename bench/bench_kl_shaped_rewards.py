"""pytest-benchmark: kl_shaped_rewards against its eager composite (cases in fastrlhf/benchmark/cases.py)."""
from fastrlhf.benchmark import pytest_benchmark

test_kl_shaped_rewards = pytest_benchmark("kl_shaped_rewards")
