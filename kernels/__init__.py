"""Triton kernels, one file per op, for CUDA tensors (CPU tensors too under TRITON_INTERPRET=1).

The C++ extension `fastrlhf._C` exposes the same functions with the same arguments; the ops in
`fastrlhf.ops` call whichever fits the device. Arguments arrive normalised by the ops: 1-D or 2-D
contiguous tensors of the caller's float dtype (logits: a [B, T, V] view with a contiguous last
dim), masks as bool, options as plain numbers. Per-token results are float32.
"""
from .token_logprobs import token_logprobs_backward, token_logprobs_forward
from .kl_penalty import kl_penalty_backward, kl_penalty_forward
from .gae import gae
from .kl_shaped_rewards import kl_shaped_rewards
from ._masked_reduction import ppo_loss_backward
from .masked_mean import masked_mean_backward, masked_mean_forward
from .masked_whiten import masked_whiten
from .ppo_policy_loss import ppo_policy_loss_forward
from .ppo_value_loss import ppo_value_loss_forward
from .sampling import sample_tokens
