"""kl_penalty: per-token estimates of KL(pi || pi_ref) from two [...] log-probability tensors.

Elementwise, one launch each way: the forward reads both inputs once and writes float32 kl; the
backward recomputes x = logprobs - ref_logprobs (cheaper than saving it) and writes both input
gradients in one pass, skipping one that autograd does not need.
"""
import math

import torch
from torch import Tensor

from . import _checks as C
from .. import reference
from ._backend import backend_name, kernels_for


@torch.library.custom_op("fastrlhf::kl_penalty", mutates_args=())
def _forward(logprobs: Tensor, ref_logprobs: Tensor, estimator: int, clamp: float) -> Tensor:
    return kernels_for(logprobs.device).kl_penalty_forward(logprobs, ref_logprobs, estimator, clamp)


@_forward.register_fake
def _(logprobs, ref_logprobs, estimator, clamp):
    return torch.empty_like(logprobs, dtype=torch.float32)


@torch.library.custom_op("fastrlhf::kl_penalty_backward", mutates_args=())
def _backward(logprobs: Tensor, ref_logprobs: Tensor, grad_kl: Tensor, estimator: int, clamp: float,
              need_logprobs: bool, need_ref: bool) -> tuple[Tensor, Tensor]:
    return kernels_for(logprobs.device).kl_penalty_backward(logprobs, ref_logprobs, grad_kl, estimator, clamp,
                                                            need_logprobs, need_ref)


@_backward.register_fake
def _(logprobs, ref_logprobs, grad_kl, estimator, clamp, need_logprobs, need_ref):
    n = logprobs.numel()
    return logprobs.new_empty(n if need_logprobs else 0), ref_logprobs.new_empty(n if need_ref else 0)


def _setup_context(ctx, inputs, output):
    logprobs, ref_logprobs, estimator, clamp = inputs
    ctx.save_for_backward(logprobs, ref_logprobs)
    ctx.estimator, ctx.clamp = estimator, clamp


def _autograd_backward(ctx, grad_kl):
    logprobs, ref_logprobs = ctx.saved_tensors
    need_logprobs, need_ref = ctx.needs_input_grad[:2]
    grad_logprobs, grad_ref = _backward(logprobs, ref_logprobs, grad_kl.float().contiguous(), ctx.estimator,
                                        ctx.clamp, need_logprobs, need_ref)
    return grad_logprobs if need_logprobs else None, grad_ref if need_ref else None, None, None


_forward.register_autograd(_autograd_backward, setup_context=_setup_context)


def kl_penalty(logprobs, ref_logprobs, *, estimator="k1", clamp=None):
    """Per-token estimate of KL(pi || pi_ref), float32 with the inputs' shape.

    With x = logprobs - ref_logprobs: "k1" = x, "k2" = x^2 / 2, "k3" = exp(-x) - 1 + x, "abs" = |x|.
    clamp=c (> 0) clamps the result to [-c, c] and, for k3, x to >= -c before the exp, so nothing
    overflows. logprobs and ref_logprobs [...] (float32/bfloat16/float16); differentiable w.r.t. both.
    """
    C.check_float("logprobs", logprobs)
    C.check_float("ref_logprobs", ref_logprobs)
    C.check_like("ref_logprobs", ref_logprobs, "logprobs", logprobs)
    C.check_choice("estimator", estimator, reference.KL_ESTIMATORS)
    if clamp is not None:
        C.check_positive("clamp", clamp)
    if backend_name(logprobs.device) == "reference":
        return reference.kl_penalty(logprobs, ref_logprobs, estimator=estimator, clamp=clamp)
    if logprobs.dtype != ref_logprobs.dtype:  # the kernels read one dtype; mixed inputs meet in float32
        logprobs, ref_logprobs = logprobs.float(), ref_logprobs.float()
    kl = _forward(logprobs.reshape(-1).contiguous(), ref_logprobs.reshape(-1).contiguous(),
                  reference.KL_ESTIMATORS.index(estimator), math.inf if clamp is None else float(clamp))
    return kl.view(logprobs.shape)
