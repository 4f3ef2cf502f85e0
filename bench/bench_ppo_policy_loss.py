"""pytest-benchmark: ppo_policy_loss against its eager composite (cases in fastrlhf/benchmark/cases.py)."""
from fastrlhf.benchmark import pytest_benchmark

test_ppo_policy_loss = pytest_benchmark("ppo_policy_loss")
