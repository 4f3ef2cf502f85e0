"""masked_whiten: normalise x by the mean and variance of its masked elements (the whole tensor).
No gradient: it whitens advantages, which PPO treats as constants. Kernels: kernels/masked_whiten.py,
csrc/cpu/masked_whiten.cpp; the variance comes from Chan-merged per-block moments, never E[x^2] - E[x]^2.
"""
import torch
from torch import Tensor

from . import _checks as C
from .. import reference
from ._backend import backend_name, kernels_for
from ._masked_reduction import check_masked, flat_mask


@torch.library.custom_op("fastrlhf::masked_whiten", mutates_args=())
def _whiten(x: Tensor, mask: Tensor, shift_mean: bool, unbiased: bool, eps: float) -> Tensor:
    return kernels_for(x.device).masked_whiten(x, mask, shift_mean, unbiased, eps)


@_whiten.register_fake
def _(x, mask, shift_mean, unbiased, eps):
    return torch.empty_like(x, dtype=torch.float32)


def masked_whiten(x, mask, *, shift_mean=True, unbiased=False, eps=1e-8):
    """(x - mean) * rsqrt(var + eps) over the masked elements of x, float32, 0 where masked out.

    shift_mean=False adds the mean back; unbiased=True divides M2 by n - 1 (clamped to >= 1) instead of n.
    Not differentiable: the result never requires grad.
    """
    check_masked(("x",), (x,), mask)
    C.check_positive("eps", eps)
    if backend_name(x.device) == "reference":
        return reference.masked_whiten(x, mask, shift_mean=shift_mean, unbiased=unbiased, eps=eps)
    flat = x.detach().contiguous().view(-1)
    y = _whiten(flat, flat_mask(mask, flat.shape), bool(shift_mean), bool(unbiased), float(eps))
    return y.view(x.shape)
