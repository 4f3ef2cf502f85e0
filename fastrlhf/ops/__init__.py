"""Fused, differentiable PPO ops. Each picks its backend by the inputs' device (see _backend)."""
from ._backend import BACKENDS, available_backends, backend_name, set_backend
from .masked_mean import masked_mean
from .masked_whiten import masked_whiten
from .ppo_policy_loss import ppo_policy_loss
from .ppo_value_loss import ppo_value_loss
from .token_logprobs import token_logprobs

__all__ = ["BACKENDS", "available_backends", "backend_name", "set_backend", "token_logprobs",
           "masked_mean", "masked_whiten", "ppo_policy_loss", "ppo_value_loss"]
