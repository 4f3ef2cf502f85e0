"""masked_mean: sum(x * mask) / sum(mask) over everything or along one dim; 0 (not nan) where the mask
is empty. Differentiable w.r.t. x. The kernels see x as [outer, D, inner] with D the reduced dim
(everything: [1, N, 1]); kernels/masked_mean.py, csrc/cpu/masked_mean.cpp.
"""
import math

import torch
from torch import Tensor

from .. import reference
from ._backend import backend_name, kernels_for
from ._masked_reduction import check_masked, flat_mask


@torch.library.custom_op("fastrlhf::masked_mean", mutates_args=())
def _forward(x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    return kernels_for(x.device).masked_mean_forward(x, mask)


@_forward.register_fake
def _(x, mask):
    mean = x.new_empty((x.shape[0], x.shape[2]), dtype=torch.float32)
    return mean, torch.empty_like(mean)


@torch.library.custom_op("fastrlhf::masked_mean_backward", mutates_args=())
def _backward(grad: Tensor, inv_count: Tensor, mask: Tensor, dtype: torch.dtype) -> Tensor:
    return kernels_for(mask.device).masked_mean_backward(grad, inv_count, mask, dtype)


@_backward.register_fake
def _(grad, inv_count, mask, dtype):
    return torch.empty_like(mask, dtype=dtype)


def _setup_context(ctx, inputs, output):
    _, mask = inputs
    _, inv_count = output
    ctx.mark_non_differentiable(inv_count)
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(inv_count, mask)
    ctx.dtype = inputs[0].dtype


def _autograd_backward(ctx, grad_mean, _grad_inv_count):
    if grad_mean is None:
        return None, None
    inv_count, mask = ctx.saved_tensors
    return _backward(grad_mean.float().contiguous(), inv_count, mask, ctx.dtype), None


_forward.register_autograd(_autograd_backward, setup_context=_setup_context)


def _reduced_dim(dim, ndim):
    if isinstance(dim, bool) or not isinstance(dim, int):
        raise TypeError(f"dim must be None or an int, got {type(dim).__name__}")
    if not -ndim <= dim < ndim:
        raise ValueError(f"dim must be in [{-ndim}, {ndim}) for a tensor of {ndim} dims, got {dim}")
    return dim % ndim


def masked_mean(x, mask, dim=None):
    """sum(x * mask) / sum(mask) as float32: over everything (dim=None, a 0-dim tensor) or along dim.
    0 where the mask is empty, with a 0 gradient there. Differentiable w.r.t. x."""
    check_masked(("x",), (x,), mask)
    if dim is not None:
        dim = _reduced_dim(dim, x.dim())
    if backend_name(x.device) == "reference":
        return reference.masked_mean(x, mask, dim)
    if dim is None:
        view, out_shape = (1, x.numel(), 1), ()
    else:
        view = (math.prod(x.shape[:dim]), x.shape[dim], math.prod(x.shape[dim + 1:]))
        out_shape = x.shape[:dim] + x.shape[dim + 1:]
    mean, _ = _forward(x.contiguous().view(view), flat_mask(mask, view))
    return mean.view(out_shape)
