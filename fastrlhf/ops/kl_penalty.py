"""kl_penalty: per-token estimates of KL(pi || pi_ref) from two [...] log-probability tensors.

Elementwise, one launch each way: the forward reads both inputs once and writes float32 kl; the
backward recomputes x = logprobs - ref_logprobs (cheaper than saving it) and writes both input
gradients in one pass, skipping one that autograd does not need.
torch.ops.fastrlhf.kl_penalty: CPU kernel and autograd in csrc/bindings/kl_penalty.cpp, Triton
kernel (CUDA) below, launched from kernels/kl_penalty.py.
"""
import math

import torch

from . import _checks as C
from .. import reference
from ..codes import KL_ESTIMATORS
from ._backend import fake_kernel, operator, triton_kernel, triton_kernels, use_reference

_op = operator("kl_penalty")


def _check_kernel_inputs(logprobs, ref_logprobs, estimator, clamp):
    """The contract of the Triton kernels (the C++ ones check theirs in C++)."""
    C.check_float("logprobs", logprobs)
    C.check_like("ref_logprobs", ref_logprobs, "logprobs", logprobs)
    C.check_same_dtype("ref_logprobs", ref_logprobs, "logprobs", logprobs)
    C.check_code("estimator", estimator, KL_ESTIMATORS)
    C.check_positive("clamp", clamp)


@triton_kernel("kl_penalty")
def _(logprobs, ref_logprobs, estimator, clamp):
    _check_kernel_inputs(logprobs, ref_logprobs, estimator, clamp)
    kl = triton_kernels().kl_penalty_forward(logprobs.contiguous().view(-1), ref_logprobs.contiguous().view(-1),
                                           estimator, clamp)
    return kl.view(logprobs.shape)


@triton_kernel("kl_penalty_backward")
def _(logprobs, ref_logprobs, grad_kl, estimator, clamp, need_logprobs, need_ref):
    _check_kernel_inputs(logprobs, ref_logprobs, estimator, clamp)
    C.check_like("grad_kl", grad_kl, "logprobs", logprobs)
    grads = triton_kernels().kl_penalty_backward(logprobs.contiguous().view(-1), ref_logprobs.contiguous().view(-1),
                                               grad_kl.float().contiguous().view(-1), estimator, clamp, need_logprobs,
                                               need_ref)
    return tuple(g.view(logprobs.shape) if need else g for g, need in zip(grads, (need_logprobs, need_ref)))


@fake_kernel("kl_penalty")
def _(logprobs, ref_logprobs, estimator, clamp):
    return torch.empty_like(logprobs, dtype=torch.float32, memory_format=torch.contiguous_format)


@fake_kernel("kl_penalty_backward")
def _(logprobs, ref_logprobs, grad_kl, estimator, clamp, need_logprobs, need_ref):
    def grad(need):
        return logprobs.new_empty(logprobs.shape if need else (0,))
    return grad(need_logprobs), grad(need_ref)


def kl_penalty(logprobs, ref_logprobs, *, estimator="k1", clamp=None):
    """Per-token estimate of KL(pi || pi_ref), float32 with the inputs' shape.

    With x = logprobs - ref_logprobs: "k1" = x, "k2" = x^2 / 2, "k3" = exp(-x) - 1 + x, "abs" = |x|.
    clamp=c (> 0) clamps the result to [-c, c] and, for k3, x to >= -c before the exp, so nothing
    overflows. logprobs and ref_logprobs [...] (float32/bfloat16/float16); differentiable w.r.t. both.
    """
    C.check_float("logprobs", logprobs)
    C.check_float("ref_logprobs", ref_logprobs)
    C.check_like("ref_logprobs", ref_logprobs, "logprobs", logprobs)
    C.check_choice("estimator", estimator, KL_ESTIMATORS)
    if clamp is not None:
        C.check_positive("clamp", clamp)
    if use_reference():
        return reference.kl_penalty(logprobs, ref_logprobs, estimator=estimator, clamp=clamp)
    if logprobs.dtype != ref_logprobs.dtype:  # the kernels read one dtype; mixed inputs meet in float32
        logprobs, ref_logprobs = logprobs.float(), ref_logprobs.float()
    return _op(logprobs, ref_logprobs, KL_ESTIMATORS.index(estimator), math.inf if clamp is None else float(clamp))
