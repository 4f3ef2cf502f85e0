"""ppo_value_loss: the PPO clipped value loss and its clip fraction, in one fused pass. Kernels:
kernels/ppo_value_loss.py, csrc/cpu/ppo_value_loss.cpp; the finalize and the backward are shared
with ppo_policy_loss (see _masked_reduction).
"""
import math

import torch
from torch import Tensor

from . import _checks as C
from .. import reference
from ._backend import backend_name, kernels_for
from ._masked_reduction import check_masked, check_reduction, flat_mask, loss_fake, loss_rows, register_loss_autograd

STATS = ("clip_frac",)


@torch.library.custom_op("fastrlhf::ppo_value_loss", mutates_args=())
def _forward(values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor, clip_eps: float,
             reduction: str) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return kernels_for(values.device).ppo_value_loss_forward(values, old_values, returns, mask, clip_eps, reduction)


@_forward.register_fake
def _(values, old_values, returns, mask, clip_eps, reduction):
    return loss_fake(values, len(STATS))


register_loss_autograd(_forward)


def ppo_value_loss(values, old_values, returns, mask, *, clip_eps=0.2, reduction="token_mean"):
    """PPO value loss over [..., T] tokens -> (loss, stats).

    0.5 * reduce(max((v - R)^2, (old + clamp(v - old, -clip_eps, clip_eps) - R)^2)); clip_eps=None is
    the unclipped 0.5 * reduce((v - R)^2). reduction as in ppo_policy_loss. stats["clip_frac"]: masked
    token mean of the clipped branch being strictly larger (0-dim float32, no gradient).
    The loss is float32 and differentiable w.r.t. values only.
    """
    check_masked(("values", "old_values", "returns"), (values, old_values, returns), mask)
    if clip_eps is not None:
        C.check_positive("clip_eps", clip_eps)
    check_reduction(reduction, reference.REDUCTIONS)
    if backend_name(values.device) == "reference":
        return reference.ppo_value_loss(values, old_values, returns, mask, clip_eps=clip_eps, reduction=reduction)
    v, old, ret = loss_rows(values, old_values, returns)
    loss, stats, _, _ = _forward(v, old, ret, flat_mask(mask, v.shape),
                                 math.inf if clip_eps is None else float(clip_eps), reduction)
    return loss, dict(zip(STATS, stats.unbind()))
