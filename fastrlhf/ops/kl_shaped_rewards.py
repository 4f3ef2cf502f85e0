"""kl_shaped_rewards: PPO's per-token rewards from sequence scores and a per-token KL penalty.

One launch, one pass: kl and mask are read once, the rewards written once (the score lands on the
last masked token of its row, found on the way). torch.ops.fastrlhf.kl_shaped_rewards: CPU kernel in
csrc/bindings/kl_shaped_rewards.cpp, Triton kernel (CUDA) below, launched from
kernels/kl_shaped_rewards.py. No autograd.
"""
import math
import numbers

import torch

from . import _checks as C
from .. import reference
from ._backend import fake_kernel, operator, triton_kernel, triton_kernels, use_reference

_op = operator("kl_shaped_rewards")


def _check_values(scores, mask):
    """The data checks of the Python backends, where checks run (the C++ kernel checks as it reads)."""
    if C.checks_enabled(scores):
        C.check_binary_mask(mask)
        C.check_finite_values("scores", scores)


@triton_kernel("kl_shaped_rewards")
def _(scores, kl, mask, kl_coef, score_clip):
    C.check_float("kl", kl)
    C.check_float("scores", scores)
    C.check_has_time_dim("kl", kl)
    C.check_like("mask", mask, "kl", kl)
    C.check_same_device("scores", scores, "kl", kl)
    if scores.shape != kl.shape[:-1]:
        raise ValueError(f"scores must have shape kl.shape[:-1] = {tuple(kl.shape[:-1])}, got {tuple(scores.shape)}")
    if not math.isfinite(kl_coef):
        raise ValueError(f"kl_coef must be finite, got {kl_coef}")
    C.check_positive("score_clip", score_clip)
    _check_values(scores, mask)
    T = kl.shape[-1]
    rewards = triton_kernels().kl_shaped_rewards(scores.contiguous().view(-1), kl.contiguous().view(-1, T),
                                               C.kept(mask).contiguous().view(-1, T), kl_coef, score_clip)
    return rewards.view(kl.shape)


@fake_kernel("kl_shaped_rewards")
def _(scores, kl, mask, kl_coef, score_clip):
    return torch.empty_like(kl, dtype=torch.float32, memory_format=torch.contiguous_format)


def kl_shaped_rewards(scores, kl, mask, *, kl_coef, score_clip=None):
    """Per-token rewards, float32 [..., T]: -kl_coef * kl where mask (0 elsewhere, kl there never
    read), plus each sequence's score, clamped to [-score_clip, score_clip] when given, at its last
    masked position (the EOS token).

    scores [...] (= kl.shape[:-1]) and kl [..., T] float32/bfloat16/float16; mask bool or 0/1 [..., T],
    holes allowed; a row with no masked token gets no score. kl_coef: a finite number of either sign.
    A NaN or inf score is an error. No gradient: the inputs are detached.
    """
    C.check_float("scores", scores)
    C.check_float("kl", kl)
    C.check_mask("mask", mask)
    C.check_like("mask", mask, "kl", kl)
    C.check_same_device("scores", scores, "kl", kl)
    C.check_has_time_dim("kl", kl)
    if scores.shape != kl.shape[:-1]:
        raise ValueError(f"scores must have shape kl.shape[:-1] = {tuple(kl.shape[:-1])}, got {tuple(scores.shape)}")
    if isinstance(kl_coef, bool) or not isinstance(kl_coef, numbers.Real):
        raise TypeError(f"kl_coef must be a number, got {type(kl_coef).__name__}")
    if not math.isfinite(kl_coef):
        raise ValueError(f"kl_coef must be finite, got {kl_coef}")
    if score_clip is not None:
        C.check_positive("score_clip", score_clip)
    scores, kl = scores.detach(), kl.detach()
    if use_reference():
        _check_values(scores, mask)
        return reference.kl_shaped_rewards(scores, kl, mask, kl_coef=kl_coef, score_clip=score_clip)
    return _op(scores, kl, mask, float(kl_coef), math.inf if score_clip is None else float(score_clip))
