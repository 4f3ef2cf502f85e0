"""ppo_value_loss: the PPO clipped value loss and its clip fraction, in one fused pass.
torch.ops.fastrlhf.ppo_value_loss: CPU kernel and autograd in csrc/bindings/ppo_value_loss.cpp,
Triton kernel (CUDA) below, launched from kernels/ppo_value_loss.py; the finalize and the backward are
shared with ppo_policy_loss (see _masked_reduction).
"""
import math

from . import _checks as C
from .. import reference
from ..codes import REDUCTIONS, VALUE_STATS
from ._backend import fake_kernel, operator, triton_kernel, triton_kernels, use_reference
from ._masked_reduction import (check_kernel_inputs, check_mask_values, check_masked, check_reduction, loss_fake,
                                one_dtype, rows)

_op = operator("ppo_value_loss")
_NAMES = ("values", "old_values", "returns")


@triton_kernel("ppo_value_loss")
def _(values, old_values, returns, mask, clip_eps, reduction):
    check_kernel_inputs(_NAMES, (values, old_values, returns), mask, reduction)
    C.check_positive("clip_eps", clip_eps)
    loss, stats, token_grad, row_scale = triton_kernels().ppo_value_loss_forward(
        rows(values), rows(old_values), rows(returns), rows(C.kept(mask)), clip_eps, reduction)
    return loss, stats, token_grad.view(values.shape), row_scale


@fake_kernel("ppo_value_loss")
def _(values, old_values, returns, mask, clip_eps, reduction):
    return loss_fake(values, len(VALUE_STATS))


def ppo_value_loss(values, old_values, returns, mask, *, clip_eps=0.2, reduction="token_mean"):
    """PPO value loss over [..., T] tokens -> (loss, stats).

    0.5 * reduce(max((v - R)^2, (v_clipped - R)^2)) with v_clipped = old + clamp(v - old, -clip_eps,
    clip_eps) where |v - old| > clip_eps, else v itself (exactly; see reference.ppo_value_loss);
    clip_eps=None is the unclipped 0.5 * reduce((v - R)^2). reduction as in ppo_policy_loss.
    stats["clip_frac"]: masked token mean of the clipped branch being strictly larger (0-dim float32,
    no gradient). Masked-out tokens are never read. The loss is float32 and differentiable w.r.t.
    values only.
    """
    check_masked(_NAMES, (values, old_values, returns), mask)
    if clip_eps is not None:
        C.check_positive("clip_eps", clip_eps)
    check_reduction(reduction)
    if use_reference():
        check_mask_values(mask)
        return reference.ppo_value_loss(values, old_values, returns, mask, clip_eps=clip_eps, reduction=reduction)
    loss, stats, _, _ = _op(*one_dtype(values, old_values, returns), mask,
                            math.inf if clip_eps is None else float(clip_eps), REDUCTIONS.index(reduction))
    return loss, dict(zip(VALUE_STATS, stats.unbind()))
