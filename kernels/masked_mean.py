"""masked_mean over a [outer, D, inner] view: out[o, i] = sum_d x * mask / sum_d mask, 0 where empty.

The whole tensor (outer = inner = 1) is one two-level reduction of moments (kernels/_masked_reduction.py):
1 launch up to SINGLE_PROGRAM_MAX elements, else 2. Otherwise one program per (o, block of inner)
walks D (1 launch). The backward is elementwise, grad_x = grad[o, i] * inv_count[o, i] where mask
(1 launch; programs (o, block of D, block of inner), striding over D beyond MAX_PROGRAMS blocks).
"""
import itertools

import torch
import triton
import triton.language as tl

from ._masked_reduction import MAX_PROGRAMS, masked_moments, merge_partials, moments_config, moments_partials
from ._specs import FLOAT_DTYPES, powers_of_two, short, spec

_TILE = 2048
_MAX_BLOCK_I = 256
_LINES_WARPS = 4


@triton.jit
def _mean_all_kernel(x_ptr, mask_ptr, partials_ptr, mean_ptr, inv_count_ptr, N, P,
                     FROM_PARTIALS: tl.constexpr, BLOCK: tl.constexpr, PARTIALS_BLOCK: tl.constexpr):
    """One program: the moments of all of x (small inputs) or of the partials of _moments_kernel."""
    if FROM_PARTIALS:
        n, mean, _ = merge_partials(partials_ptr, P, PARTIALS_BLOCK)
    else:
        n, mean, _ = masked_moments(x_ptr, mask_ptr, N, 0, 1, BLOCK)
    tl.store(mean_ptr, mean.to(tl.float32))
    tl.store(inv_count_ptr, (1.0 / tl.maximum(n, 1.0)).to(tl.float32))


@triton.jit
def _columns(axis, BLOCK_I: tl.constexpr):
    """This program's block of inner indices. A lone column is the constant 0, so the compiler knows
    that offsets along D keep their alignment and vectorises those loads (dim=-1, dim=None)."""
    if BLOCK_I == 1:
        i = tl.arange(0, 1)
    else:
        i = tl.program_id(axis) * BLOCK_I + tl.arange(0, BLOCK_I)
    return i


@triton.jit
def _mean_lines_kernel(x_ptr, mask_ptr, mean_ptr, inv_count_ptr, D, inner, BLOCK_D: tl.constexpr, BLOCK_I: tl.constexpr):
    outer = tl.program_id(0).to(tl.int64)
    i = _columns(1, BLOCK_I)
    total = tl.zeros([BLOCK_D, BLOCK_I], tl.float32)
    count = tl.zeros([BLOCK_D, BLOCK_I], tl.float32)
    for d0 in range(0, D, BLOCK_D):
        d = d0 + tl.arange(0, BLOCK_D)
        offs = (outer * D + d[:, None]) * inner + i[None, :]  # along inner when inner > 1: coalesced
        inside = (d[:, None] < D) & (i[None, :] < inner)
        m = tl.load(mask_ptr + offs, mask=inside, other=0) != 0
        total += tl.where(m, tl.load(x_ptr + offs, mask=inside, other=0.0).to(tl.float32), 0.0)
        count += m.to(tl.float32)
    inv_count = 1.0 / tl.maximum(tl.sum(count, axis=0), 1.0)
    out = outer * inner + i
    tl.store(mean_ptr + out, tl.sum(total, axis=0) * inv_count, mask=i < inner)
    tl.store(inv_count_ptr + out, inv_count, mask=i < inner)


def _tile(inner):
    """(BLOCK_D, BLOCK_I): _TILE elements whatever D, since a smaller tile for a short D saves nothing that
    counts and costs a compile per size."""
    block_i = min(triton.next_power_of_2(inner), _MAX_BLOCK_I)
    return _TILE // block_i, block_i


def masked_mean_forward(x, mask):
    """x [outer, D, inner] (float dtype), mask bool like x -> (mean, inv_count), float32 [outer, inner];
    inv_count = 1 / max(count, 1) is what the backward needs."""
    outer, D, inner = x.shape
    mean = torch.empty((outer, inner), device=x.device, dtype=torch.float32)
    inv_count = torch.empty_like(mean)
    if outer * inner == 1:
        partials, P, config = moments_partials(x, mask)
        _mean_all_kernel[(1,)](x, mask, partials, mean, inv_count, x.numel(), P, FROM_PARTIALS=P > 0, **config)
    else:
        block_d, block_i = _tile(inner)
        _mean_lines_kernel[(outer, triton.cdiv(inner, block_i))](x, mask, mean, inv_count, D, inner,
                                                                 BLOCK_D=block_d, BLOCK_I=block_i,
                                                                 num_warps=_LINES_WARPS)
    return mean, inv_count


@triton.jit
def _mean_backward_kernel(grad_ptr, inv_count_ptr, mask_ptr, grad_x_ptr, D, inner,
                          BLOCK_D: tl.constexpr, BLOCK_I: tl.constexpr):
    """Program (o, j, k): inner block k of the D blocks j, j + programs(1), ... of outer index o."""
    outer = tl.program_id(0).to(tl.int64)
    i = _columns(2, BLOCK_I)
    out = outer * inner + i
    scale = tl.load(grad_ptr + out, mask=i < inner, other=0.0) * tl.load(inv_count_ptr + out, mask=i < inner, other=0.0)
    for d0 in range(tl.program_id(1) * BLOCK_D, D, tl.num_programs(1) * BLOCK_D):
        d = d0 + tl.arange(0, BLOCK_D)
        offs = (outer * D + d[:, None]) * inner + i[None, :]
        inside = (d[:, None] < D) & (i[None, :] < inner)
        m = tl.load(mask_ptr + offs, mask=inside, other=0) != 0
        tl.store(grad_x_ptr + offs, tl.where(m, scale[None, :], 0.0).to(grad_x_ptr.dtype.element_ty), mask=inside)


def masked_mean_backward(grad, inv_count, mask, dtype):
    """grad, inv_count float32 [outer, inner]; mask bool [outer, D, inner] -> grad_x [outer, D, inner] of dtype."""
    outer, D, inner = mask.shape
    grad_x = torch.empty(mask.shape, device=mask.device, dtype=dtype)
    block_d, block_i = _tile(inner)
    grid = (outer, min(triton.cdiv(D, block_d), MAX_PROGRAMS), triton.cdiv(inner, block_i))
    _mean_backward_kernel[grid](grad, inv_count, mask, grad_x, D, inner, BLOCK_D=block_d, BLOCK_I=block_i,
                                num_warps=_LINES_WARPS)
    return grad_x


def compile_specs():
    """Every specialization the launchers can pick (the contract in kernels/__init__.py)."""
    config = moments_config()
    specs = [spec(f"masked_mean_all {short(dtype)}", _mean_all_kernel, config["num_warps"],
                  dict(FROM_PARTIALS=from_partials, BLOCK=config["BLOCK"], PARTIALS_BLOCK=config["PARTIALS_BLOCK"]),
                  1, x_ptr=dtype, mask_ptr=torch.bool, partials_ptr=torch.float64, mean_ptr=torch.float32,
                  inv_count_ptr=torch.float32, N="i32", P="i32")
             for dtype, from_partials in itertools.product(FLOAT_DTYPES, (False, True))]
    for dtype, inner in itertools.product(FLOAT_DTYPES, powers_of_two(_MAX_BLOCK_I)):
        block_d, block_i = _tile(inner)
        blocks = dict(BLOCK_D=block_d, BLOCK_I=block_i)
        specs.append(spec(f"masked_mean_lines {short(dtype)}", _mean_lines_kernel, _LINES_WARPS, blocks, x_ptr=dtype,
                          mask_ptr=torch.bool, mean_ptr=torch.float32, inv_count_ptr=torch.float32, D="i32",
                          inner="i32"))
        specs.append(spec(f"masked_mean_backward {short(dtype)}", _mean_backward_kernel, _LINES_WARPS, blocks,
                          grad_ptr=torch.float32, inv_count_ptr=torch.float32, mask_ptr=torch.bool, grad_x_ptr=dtype,
                          D="i32", inner="i32"))
    return specs
