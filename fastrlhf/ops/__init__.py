"""Fused, differentiable PPO ops: each one operator, torch.ops.fastrlhf.<op>, whose kernel the
dispatcher picks by the inputs' device (see _backend)."""
from ._backend import BACKENDS, available_backends, backend_name, register_kernels, set_backend
from .gae import gae
from .kl_penalty import kl_penalty
from .kl_shaped_rewards import kl_shaped_rewards
from .linear_logprobs import linear_logprobs
from .masked_mean import masked_mean
from .masked_whiten import masked_whiten
from .ppo_policy_loss import ppo_policy_loss
from .ppo_value_loss import ppo_value_loss
from .sampling import sample_tokens
from .token_logprobs import token_logprobs

register_kernels()

__all__ = ["BACKENDS", "available_backends", "backend_name", "set_backend", "gae", "kl_penalty",
           "kl_shaped_rewards", "linear_logprobs", "masked_mean", "masked_whiten", "ppo_policy_loss", "ppo_value_loss",
           "sample_tokens", "token_logprobs"]
