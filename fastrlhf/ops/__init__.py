"""Fused, differentiable PPO ops. Each picks its backend by the inputs' device (see _backend)."""
from ._backend import BACKENDS, available_backends, backend_name, set_backend
from .token_logprobs import token_logprobs
from .kl_penalty import kl_penalty
from .gae import gae
from .kl_shaped_rewards import kl_shaped_rewards

__all__ = ["BACKENDS", "available_backends", "backend_name", "set_backend", "token_logprobs", "kl_penalty", "gae",
           "kl_shaped_rewards"]
