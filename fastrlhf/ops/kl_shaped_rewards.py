"""kl_shaped_rewards: PPO's per-token rewards from sequence scores and a per-token KL penalty.

One launch, one pass: kl and mask are read once, the rewards written once (the score lands on the
last masked token of its row, found on the way).
"""
import math
import numbers

import torch
from torch import Tensor

from . import _checks as C
from .. import reference
from ._backend import backend_name, checks_enabled, kernels_for


@torch.library.custom_op("fastrlhf::kl_shaped_rewards", mutates_args=())
def _forward(scores: Tensor, kl: Tensor, mask: Tensor, kl_coef: float, score_clip: float) -> Tensor:
    if checks_enabled(kl.device):
        C.check_finite_values("scores", scores)
    return kernels_for(kl.device).kl_shaped_rewards(scores, kl, mask, kl_coef, score_clip)


@_forward.register_fake
def _(scores, kl, mask, kl_coef, score_clip):
    return torch.empty_like(kl, dtype=torch.float32)


def kl_shaped_rewards(scores, kl, mask, *, kl_coef, score_clip=None):
    """Per-token rewards, float32 [..., T]: -kl_coef * kl * mask, plus each sequence's score, clamped
    to [-score_clip, score_clip] when given, at its last masked position (the EOS token).

    scores [...] (= kl.shape[:-1]) and kl [..., T] float32/bfloat16/float16; mask bool or 0/1 [..., T],
    holes allowed; a row with no masked token gets no score. kl_coef: a finite number of either sign.
    No gradient: the inputs are detached.
    """
    C.check_float("scores", scores)
    C.check_float("kl", kl)
    C.check_mask("mask", mask)
    C.check_like("mask", mask, "kl", kl)
    C.check_same_device("scores", scores, "kl", kl)
    if kl.dim() == 0:
        raise ValueError("kl must have a time dimension [..., T], got a 0-dim tensor")
    if scores.shape != kl.shape[:-1]:
        raise ValueError(f"scores must have shape kl.shape[:-1] = {tuple(kl.shape[:-1])}, got {tuple(scores.shape)}")
    if isinstance(kl_coef, bool) or not isinstance(kl_coef, numbers.Real):
        raise TypeError(f"kl_coef must be a number, got {type(kl_coef).__name__}")
    if not math.isfinite(kl_coef):
        raise ValueError(f"kl_coef must be finite, got {kl_coef}")
    if score_clip is not None:
        C.check_positive("score_clip", score_clip)
    scores, kl = scores.detach(), kl.detach()
    if backend_name(kl.device) == "reference":
        if checks_enabled(kl.device):
            C.check_finite_values("scores", scores)
        return reference.kl_shaped_rewards(scores, kl, mask, kl_coef=kl_coef, score_clip=score_clip)
    T = kl.shape[-1]
    rewards = _forward(scores.reshape(-1).contiguous(), kl.reshape(-1, T).contiguous(),
                       C.as_bool_mask(mask).reshape(-1, T).contiguous(), float(kl_coef),
                       math.inf if score_clip is None else float(score_clip))
    return rewards.view(kl.shape)
