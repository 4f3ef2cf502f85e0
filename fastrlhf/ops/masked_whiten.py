"""masked_whiten: normalise x by the mean and variance of its masked elements (the whole tensor).
No gradient: it whitens advantages, which PPO treats as constants. torch.ops.fastrlhf.masked_whiten:
CPU kernel in csrc/bindings/masked_whiten.cpp, Triton kernel (CUDA) below, launched from
kernels/masked_whiten.py; the variance comes from Chan-merged per-block moments, never E[x^2] - E[x]^2.
"""
import torch

from . import _checks as C
from .. import reference
from ._backend import fake_kernel, operator, triton_kernel, triton_kernels, use_reference
from ._masked_reduction import check_kernel_inputs, check_mask_values, check_masked

_op = operator("masked_whiten")


@triton_kernel("masked_whiten")
def _(x, mask, shift_mean, unbiased, eps):
    check_kernel_inputs(("x",), (x,), mask)
    C.check_positive("eps", eps)
    y = triton_kernels().masked_whiten(x.contiguous().view(-1), C.kept(mask).contiguous().view(-1), shift_mean,
                                       unbiased, eps)
    return y.view(x.shape)


@fake_kernel("masked_whiten")
def _(x, mask, shift_mean, unbiased, eps):
    return torch.empty_like(x, dtype=torch.float32, memory_format=torch.contiguous_format)


def masked_whiten(x, mask, *, shift_mean=True, unbiased=False, eps=1e-8):
    """(x - mean) * rsqrt(var + eps) over the masked elements of x, float32, 0 where masked out (x there
    is never read).

    shift_mean=False adds the mean back; unbiased=True divides M2 by n - 1 (clamped to >= 1) instead of n.
    Not differentiable: the result never requires grad.
    """
    check_masked(("x",), (x,), mask)
    C.check_positive("eps", eps)
    x = x.detach()
    if use_reference():
        check_mask_values(mask)
        return reference.masked_whiten(x, mask, shift_mean=shift_mean, unbiased=unbiased, eps=eps)
    return _op(x, mask, bool(shift_mean), bool(unbiased), float(eps))
