"""Per-token KL estimators of KL(pi || pi_ref), elementwise over flat [N] log-probabilities.

With x = logprobs - ref_logprobs: k1 = x, k2 = x^2 / 2, k3 = exp(-x) - 1 + x, abs = |x|.
A clamp c (inf: none) clamps the output to [-c, c] and, for k3, x at -c before the exp.
The backward recomputes x (cheaper than saving it) and writes both input gradients in one pass:
grad_logprobs = g * dkl/dx and grad_ref_logprobs = -g * dkl/dx. One launch per direction.
"""
import itertools
import math

import torch
import triton
import triton.language as tl

from fastrlhf.codes import KL_ESTIMATORS

from ._specs import FLOAT_DTYPES, short, spec

K1, K2, K3, ABS = (tl.constexpr(KL_ESTIMATORS.index(name)) for name in ("k1", "k2", "k3", "abs"))
# One block size for every n: a smaller block for a small input saves nothing that counts and costs a compile
# per size. 8 elements per thread at 8 warps (16 spill in the fp16 backward on sm_90: tests/test_gpu_compile.py).
_BLOCK, _WARPS = 2048, 8


@triton.jit
def _clamp_symmetric(v, c):
    return tl.where(v < -c, -c, tl.where(v > c, c, v))  # nan stays nan, as in torch.clamp


@triton.jit
def _estimate(x, clamp, ESTIMATOR: tl.constexpr, HAS_CLAMP: tl.constexpr):
    """The estimator at x, before the output clamp."""
    if ESTIMATOR == K1:
        kl = x
    elif ESTIMATOR == K2:
        kl = 0.5 * x * x
    elif ESTIMATOR == K3:
        y = x
        if HAS_CLAMP:
            y = tl.where(x < -clamp, -clamp, x)  # exp(-y) <= exp(clamp) cannot overflow; nan stays
        kl = tl.exp(-y) - 1.0 + y
    else:
        kl = tl.abs(x)
    return kl


@triton.jit
def _estimate_grad(g, x, clamp, ESTIMATOR: tl.constexpr, HAS_CLAMP: tl.constexpr):
    """g * d estimate / dx, the factors in the order of torch's autograd (a nan spreads as in the reference)."""
    if ESTIMATOR == K1:
        grad = g
    elif ESTIMATOR == K2:
        grad = g * x
    elif ESTIMATOR == K3:
        grad = g * (1.0 - tl.exp(-x))  # may overflow only where the clamp zeroes it
        if HAS_CLAMP:
            grad = tl.where(x >= -clamp, grad, 0.0)
    else:
        grad = g * tl.where(x > 0, 1.0, tl.where(x < 0, -1.0, 0.0))  # 0 at 0, as torch's abs
    return grad


@triton.jit
def _difference(logprobs_ptr, ref_ptr, offsets, inside):
    logprobs = tl.load(logprobs_ptr + offsets, mask=inside).to(tl.float32)
    return logprobs - tl.load(ref_ptr + offsets, mask=inside).to(tl.float32)


@triton.jit
def _forward_kernel(logprobs_ptr, ref_ptr, kl_ptr, N, clamp, ESTIMATOR: tl.constexpr, HAS_CLAMP: tl.constexpr,
                    BLOCK: tl.constexpr):
    offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    inside = offsets < N
    kl = _estimate(_difference(logprobs_ptr, ref_ptr, offsets, inside), clamp, ESTIMATOR, HAS_CLAMP)
    if HAS_CLAMP:
        kl = _clamp_symmetric(kl, clamp)
    tl.store(kl_ptr + offsets, kl, mask=inside)


@triton.jit
def _backward_kernel(logprobs_ptr, ref_ptr, grad_kl_ptr, grad_logprobs_ptr, grad_ref_ptr, N, clamp,
                     ESTIMATOR: tl.constexpr, HAS_CLAMP: tl.constexpr, NEED_LOGPROBS: tl.constexpr,
                     NEED_REF: tl.constexpr, BLOCK: tl.constexpr):
    offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    inside = offsets < N
    x = _difference(logprobs_ptr, ref_ptr, offsets, inside)
    g = tl.load(grad_kl_ptr + offsets, mask=inside)
    if HAS_CLAMP:  # like torch.clamp: the gradient passes where -c <= kl <= c, bounds included
        kl = _estimate(x, clamp, ESTIMATOR, HAS_CLAMP)
        g = tl.where((kl >= -clamp) & (kl <= clamp), g, 0.0)
    grad = _estimate_grad(g, x, clamp, ESTIMATOR, HAS_CLAMP)
    if NEED_LOGPROBS:
        tl.store(grad_logprobs_ptr + offsets, grad.to(grad_logprobs_ptr.dtype.element_ty), mask=inside)
    if NEED_REF:
        tl.store(grad_ref_ptr + offsets, (-grad).to(grad_ref_ptr.dtype.element_ty), mask=inside)


def kl_penalty_forward(logprobs, ref_logprobs, estimator, clamp):
    """logprobs, ref_logprobs [N] contiguous of one float dtype, estimator a code of KL_ESTIMATORS,
    clamp (inf: none) -> kl float32 [N]."""
    n = logprobs.numel()
    kl = torch.empty(n, device=logprobs.device, dtype=torch.float32)
    _forward_kernel[(triton.cdiv(n, _BLOCK),)](logprobs, ref_logprobs, kl, n, clamp, ESTIMATOR=estimator,
                                               HAS_CLAMP=not math.isinf(clamp), BLOCK=_BLOCK, num_warps=_WARPS)
    return kl


def kl_penalty_backward(logprobs, ref_logprobs, grad_kl, estimator, clamp, need_logprobs, need_ref):
    """(grad_logprobs, grad_ref_logprobs), each [N] in its input's dtype, or empty when not needed."""
    n = logprobs.numel()
    grad_logprobs = torch.empty(n if need_logprobs else 0, device=logprobs.device, dtype=logprobs.dtype)
    grad_ref = torch.empty(n if need_ref else 0, device=ref_logprobs.device, dtype=ref_logprobs.dtype)
    _backward_kernel[(triton.cdiv(n, _BLOCK),)](logprobs, ref_logprobs, grad_kl, grad_logprobs, grad_ref, n, clamp,
                                                ESTIMATOR=estimator, HAS_CLAMP=not math.isinf(clamp),
                                                NEED_LOGPROBS=need_logprobs, NEED_REF=need_ref, BLOCK=_BLOCK,
                                                num_warps=_WARPS)
    return grad_logprobs, grad_ref


def compile_specs():
    """Every specialization the launchers can pick (the contract in kernels/__init__.py)."""
    specs = []
    for dtype, estimator, has_clamp in itertools.product(FLOAT_DTYPES, (K1, K2, K3, ABS), (False, True)):
        options = dict(ESTIMATOR=estimator.value, HAS_CLAMP=has_clamp, BLOCK=_BLOCK)
        inputs = dict(logprobs_ptr=dtype, ref_ptr=dtype, N="i32", clamp="fp32")
        specs.append(spec(f"kl_penalty_forward {short(dtype)}", _forward_kernel, _WARPS, options,
                          kl_ptr=torch.float32, **inputs))
        for need_logprobs, need_ref in ((True, False), (False, True), (True, True)):  # autograd: at least one
            specs.append(spec(f"kl_penalty_backward {short(dtype)}", _backward_kernel, _WARPS,
                              options | dict(NEED_LOGPROBS=need_logprobs, NEED_REF=need_ref),
                              grad_kl_ptr=torch.float32, grad_logprobs_ptr=dtype, grad_ref_ptr=dtype, **inputs))
    return specs
