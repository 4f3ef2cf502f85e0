"""ppo_policy_loss: the PPO clipped policy-gradient loss (optionally asymmetric and dual clipped) and
its stats, in one fused pass. Kernels: kernels/ppo_policy_loss.py, csrc/cpu/ppo_policy_loss.cpp; the
finalize and the backward are shared with ppo_value_loss (see _masked_reduction).
"""
import math

import torch
from torch import Tensor

from . import _checks as C
from .. import reference
from ._backend import backend_name, kernels_for
from ._masked_reduction import check_masked, check_reduction, flat_mask, loss_fake, loss_rows, register_loss_autograd

STATS = ("clip_frac", "approx_kl", "ratio_mean")


@torch.library.custom_op("fastrlhf::ppo_policy_loss", mutates_args=())
def _forward(logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor, clip_eps: float,
             clip_eps_high: float, dual_clip: float, reduction: str) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return kernels_for(logprobs.device).ppo_policy_loss_forward(logprobs, old_logprobs, advantages, mask, clip_eps,
                                                                clip_eps_high, dual_clip, reduction)


@_forward.register_fake
def _(logprobs, old_logprobs, advantages, mask, clip_eps, clip_eps_high, dual_clip, reduction):
    return loss_fake(logprobs, len(STATS))


register_loss_autograd(_forward)


def ppo_policy_loss(logprobs, old_logprobs, advantages, mask, *, clip_eps=0.2, clip_eps_high=None, dual_clip=None,
                    reduction="token_mean"):
    """PPO policy loss over [..., T] tokens (a sequence is one row of the last dim) -> (loss, stats).

    ratio = exp(clamp(logprobs - old_logprobs, -20, 20)); per token
    max(-A * ratio, -A * clip(ratio, 1 - clip_eps, 1 + (clip_eps_high or clip_eps))), and with
    dual_clip = c > 1, at most -c * A where A < 0. reduction: "token_mean" (over all masked tokens),
    "seq_mean_token_mean" or "seq_mean_token_sum" (mean over sequences with at least one token of their
    masked token mean / sum). stats: 0-dim float32 tensors without gradient, masked token means of
    clip_frac (clipped branch strictly larger), approx_kl (0.5 * log_ratio^2) and ratio_mean.
    The loss is float32 and differentiable w.r.t. logprobs only.
    """
    check_masked(("logprobs", "old_logprobs", "advantages"), (logprobs, old_logprobs, advantages), mask)
    C.check_positive("clip_eps", clip_eps)
    if clip_eps_high is not None:
        C.check_positive("clip_eps_high", clip_eps_high)
    if dual_clip is not None and not dual_clip > 1:
        raise ValueError(f"dual_clip must be None or > 1, got {dual_clip}")
    check_reduction(reduction, reference.REDUCTIONS)
    if backend_name(logprobs.device) == "reference":
        return reference.ppo_policy_loss(logprobs, old_logprobs, advantages, mask, clip_eps=clip_eps,
                                         clip_eps_high=clip_eps_high, dual_clip=dual_clip, reduction=reduction)
    x, old, adv = loss_rows(logprobs, old_logprobs, advantages)
    high = clip_eps if clip_eps_high is None else clip_eps_high
    loss, stats, _, _ = _forward(x, old, adv, flat_mask(mask, x.shape), float(clip_eps), float(high),
                                 math.inf if dual_clip is None else float(dual_clip), reduction)
    return loss, dict(zip(STATS, stats.unbind()))
