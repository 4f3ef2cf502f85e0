"""ppo_policy_loss: the PPO clipped policy-gradient loss (optionally asymmetric and dual clipped) and
its stats, in one fused pass. torch.ops.fastrlhf.ppo_policy_loss: CPU kernel and autograd in
csrc/bindings/ppo_policy_loss.cpp, Triton kernel (CUDA) below, launched from kernels/ppo_policy_loss.py;
the finalize and the backward are shared with ppo_value_loss (see _masked_reduction).
"""
import math

from . import _checks as C
from .. import reference
from ..codes import POLICY_STATS, REDUCTIONS
from ._backend import fake_kernel, operator, triton_kernel, triton_kernels, use_reference
from ._masked_reduction import (check_kernel_inputs, check_mask_values, check_masked, check_reduction, loss_fake,
                                one_dtype, rows)

_op = operator("ppo_policy_loss")
_NAMES = ("logprobs", "old_logprobs", "advantages")


@triton_kernel("ppo_policy_loss")
def _(logprobs, old_logprobs, advantages, mask, clip_eps, clip_eps_high, dual_clip, reduction):
    check_kernel_inputs(_NAMES, (logprobs, old_logprobs, advantages), mask, reduction)
    C.check_positive("clip_eps", clip_eps)
    C.check_positive("clip_eps_high", clip_eps_high)
    if not dual_clip > 1:
        raise ValueError(f"dual_clip must be > 1 (inf: none), got {dual_clip}")
    loss, stats, token_grad, row_scale = triton_kernels().ppo_policy_loss_forward(
        rows(logprobs), rows(old_logprobs), rows(advantages), rows(C.kept(mask)), clip_eps, clip_eps_high, dual_clip,
        reduction)
    return loss, stats, token_grad.view(logprobs.shape), row_scale


@fake_kernel("ppo_policy_loss")
def _(logprobs, old_logprobs, advantages, mask, clip_eps, clip_eps_high, dual_clip, reduction):
    return loss_fake(logprobs, len(POLICY_STATS))


def ppo_policy_loss(logprobs, old_logprobs, advantages, mask, *, clip_eps=0.2, clip_eps_high=None, dual_clip=None,
                    reduction="token_mean"):
    """PPO policy loss over [..., T] tokens (a sequence is one row of the last dim) -> (loss, stats).

    ratio = exp(clamp(logprobs - old_logprobs, -20, 20)); per token
    max(-A * ratio, -A * clip(ratio, 1 - clip_eps, 1 + (clip_eps_high or clip_eps))), and with
    dual_clip = c > 1, at most -c * A where A < 0. reduction: "token_mean" (over all masked tokens),
    "seq_mean_token_mean" or "seq_mean_token_sum" (mean over sequences with at least one token of their
    masked token mean / sum). stats: 0-dim float32 tensors without gradient, masked token means of
    clip_frac (clipped branch strictly larger), approx_kl (0.5 * log_ratio^2) and ratio_mean.
    Masked-out tokens are never read. The loss is float32 and differentiable w.r.t. logprobs only.
    """
    check_masked(_NAMES, (logprobs, old_logprobs, advantages), mask)
    C.check_positive("clip_eps", clip_eps)
    if clip_eps_high is not None:
        C.check_positive("clip_eps_high", clip_eps_high)
    if dual_clip is not None and not dual_clip > 1:
        raise ValueError(f"dual_clip must be None or > 1, got {dual_clip}")
    check_reduction(reduction)
    if use_reference():
        check_mask_values(mask)
        return reference.ppo_policy_loss(logprobs, old_logprobs, advantages, mask, clip_eps=clip_eps,
                                         clip_eps_high=clip_eps_high, dual_clip=dual_clip, reduction=reduction)
    high = clip_eps if clip_eps_high is None else clip_eps_high
    loss, stats, _, _ = _op(*one_dtype(logprobs, old_logprobs, advantages), mask, float(clip_eps), float(high),
                            math.inf if dual_clip is None else float(dual_clip), REDUCTIONS.index(reduction))
    return loss, dict(zip(POLICY_STATS, stats.unbind()))
