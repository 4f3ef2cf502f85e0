"""pytest-benchmark: ppo_value_loss against its eager composite (cases in fastrlhf/benchmark/cases.py)."""
from fastrlhf.benchmark import pytest_benchmark

test_ppo_value_loss = pytest_benchmark("ppo_value_loss")
