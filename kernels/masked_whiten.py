"""masked_whiten: (x - mean) * rsqrt(var + eps) over the masked elements of the whole tensor, 0 elsewhere.

Small inputs (<= SINGLE_PROGRAM_MAX elements): one program computes the moments, then normalises,
in 1 launch. Larger: the moments partials (kernels/_masked_reduction.py), then the normalise pass,
2 launches; each normalise program merges the P <= MAX_PROGRAMS partials itself (a few KB from L2)
instead of paying a third launch for a one-program finalize.
"""
import itertools

import torch
import triton
import triton.language as tl

from ._masked_reduction import masked_moments, merge_partials, moments_config, moments_partials
from ._specs import FLOAT_DTYPES, short, spec


@triton.jit
def _whiten_kernel(x_ptr, mask_ptr, partials_ptr, y_ptr, N, P, eps, SHIFT_MEAN: tl.constexpr, UNBIASED: tl.constexpr,
                   FROM_PARTIALS: tl.constexpr, BLOCK: tl.constexpr, PARTIALS_BLOCK: tl.constexpr):
    if FROM_PARTIALS:
        n, mean, m2 = merge_partials(partials_ptr, P, PARTIALS_BLOCK)
    else:
        n, mean, m2 = masked_moments(x_ptr, mask_ptr, N, 0, 1, BLOCK)
    divisor = tl.maximum(n - 1.0 if UNBIASED else n, 1.0)  # Bessel's correction, n - 1 clamped to >= 1
    rstd = (1.0 / tl.sqrt(m2 / divisor + eps)).to(tl.float32)  # in float64: the variance may pass float32's range
    mean = mean.to(tl.float32)
    shift = 0.0 if SHIFT_MEAN else mean
    for start in range(tl.program_id(0) * BLOCK, N, tl.num_programs(0) * BLOCK):
        offs = start + tl.arange(0, BLOCK)
        inside = offs < N
        m = tl.load(mask_ptr + offs, mask=inside, other=0) != 0
        x = tl.load(x_ptr + offs, mask=inside, other=0.0).to(tl.float32)
        tl.store(y_ptr + offs, tl.where(m, (x - mean) * rstd + shift, 0.0), mask=inside)


def masked_whiten(x, mask, shift_mean, unbiased, eps):
    """x [N] (float dtype), mask bool [N] -> y float32 [N]."""
    y = torch.empty(x.shape, device=x.device, dtype=torch.float32)
    partials, P, config = moments_partials(x, mask)
    _whiten_kernel[(max(P, 1),)](x, mask, partials, y, x.numel(), P, eps, SHIFT_MEAN=shift_mean, UNBIASED=unbiased,
                                 FROM_PARTIALS=P > 0, **config)
    return y


def compile_specs():
    """Every specialization the launcher can pick (the contract in kernels/__init__.py): one program
    without partials, many with them."""
    config = moments_config()
    return [spec(f"masked_whiten {short(dtype)}", _whiten_kernel, config["num_warps"],
                 dict(SHIFT_MEAN=shift_mean, UNBIASED=unbiased, FROM_PARTIALS=from_partials, BLOCK=config["BLOCK"],
                      PARTIALS_BLOCK=config["PARTIALS_BLOCK"]), 2 if from_partials else 1,
                 x_ptr=dtype, mask_ptr=torch.bool, partials_ptr=torch.float64, y_ptr=torch.float32, N="i32", P="i32",
                 eps="fp32")
            for dtype, shift_mean, unbiased, from_partials in itertools.product(FLOAT_DTYPES, *[(False, True)] * 3)]
