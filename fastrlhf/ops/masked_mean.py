"""masked_mean: sum(x * mask) / sum(mask) over everything or along one dim; 0 (not nan) where the mask
is empty. Differentiable w.r.t. x. The kernels see x as [outer, D, inner] with D the reduced dim
(everything: [1, N, 1]). torch.ops.fastrlhf.masked_mean: CPU kernel and autograd in
csrc/bindings/masked_mean.cpp, Triton kernel (CUDA) below, launched from kernels/masked_mean.py.
"""
import math

import torch

from . import _checks as C
from .. import reference
from ._backend import fake_kernel, operator, triton_kernel, triton_kernels, use_reference
from ._masked_reduction import check_kernel_inputs, check_mask_values, check_masked

_op = operator("masked_mean")


def _lines(shape, dim):
    """(outer, D, inner) of x viewed along dim (None: everything), and the mean's shape."""
    if dim is None or len(shape) == 0:
        return (1, math.prod(shape), 1), ()
    dim %= len(shape)
    return (math.prod(shape[:dim]), shape[dim], math.prod(shape[dim + 1:])), shape[:dim] + shape[dim + 1:]


@triton_kernel("masked_mean")
def _(x, mask, dim):
    check_kernel_inputs(("x",), (x,), mask)
    view, mean_shape = _lines(x.shape, dim)
    mean, inv_count = triton_kernels().masked_mean_forward(x.contiguous().view(view),
                                                           C.kept(mask).contiguous().view(view))
    return mean.view(mean_shape), inv_count.view(mean_shape)


@triton_kernel("masked_mean_backward")
def _(grad, inv_count, mask, dim, dtype):
    view, mean_shape = _lines(mask.shape, dim)
    if grad.shape != mean_shape or inv_count.shape != mean_shape:
        raise ValueError(f"grad and inv_count must have the mean's shape {tuple(mean_shape)}")
    grad_x = triton_kernels().masked_mean_backward(grad.float().contiguous().view(view[0], view[2]),
                                                 inv_count.contiguous().view(view[0], view[2]),
                                                 C.kept(mask).contiguous().view(view), dtype)
    return grad_x.view(mask.shape)


@fake_kernel("masked_mean")
def _(x, mask, dim):
    _, mean_shape = _lines(x.shape, dim)
    mean = x.new_empty(mean_shape, dtype=torch.float32)
    return mean, torch.empty_like(mean)


@fake_kernel("masked_mean_backward")
def _(grad, inv_count, mask, dim, dtype):
    return torch.empty_like(mask, dtype=dtype, memory_format=torch.contiguous_format)


def _reduced_dim(dim, ndim):
    if isinstance(dim, bool) or not isinstance(dim, int):
        raise TypeError(f"dim must be None or an int, got {type(dim).__name__}")
    if not -ndim <= dim < ndim:
        raise ValueError(f"dim must be in [{-ndim}, {ndim}) for a tensor of {ndim} dims, got {dim}")
    return dim % ndim


def masked_mean(x, mask, dim=None):
    """sum(x * mask) / sum(mask) as float32: over everything (dim=None, a 0-dim tensor) or along dim.
    0 where the mask is empty, with a 0 gradient there; x where the mask is 0 is never read.
    Differentiable w.r.t. x."""
    check_masked(("x",), (x,), mask)
    if dim is not None:
        dim = _reduced_dim(dim, x.dim())
    if use_reference():
        check_mask_values(mask)
        return reference.masked_mean(x, mask, dim)
    return _op(x, mask, dim)[0]
