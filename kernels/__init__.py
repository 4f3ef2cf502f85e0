"""Triton kernels, one file per op, for CUDA tensors (CPU tensors too under TRITON_INTERPRET=1).

fastrlhf/ops/<op>.py registers each launcher as the CUDA kernel of torch.ops.fastrlhf.<op> (the C++
kernels serve CPU tensors). Arguments arrive normalised by that registration: 1-D or 2-D contiguous
tensors of one float dtype (logits: a [B, T, V] view with a contiguous last dim), masks as bool,
options as plain numbers and integer codes (fastrlhf/codes.py). Per-token results are float32.
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
