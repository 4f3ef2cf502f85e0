"""fastrlhf: fused kernels and a thin trainer for RLHF with PPO."""
from . import ops, reference

__version__ = "0.1.0"
__all__ = ["ops", "reference"]
