"""Pieces shared by masked_mean, masked_whiten and the PPO losses: input checks, and the kernels of
fastrlhf::ppo_loss_backward, the backward of both losses (see kernels/_masked_reduction.py):
    grad_input = grad_loss * token_grad * row_scale[row],
with token_grad (d token loss / d input, float32) and row_scale saved by the forward. The autograd
that calls it is C++ (csrc/bindings/masked_reduction.cpp).
"""
import torch

from . import _checks as C
from ..codes import REDUCTIONS
from ._backend import fake_kernel, triton_kernel, triton_kernels


def check_masked(names, tensors, mask):
    """Float tensors of one shape and device, the first one's, and a mask like them."""
    first = tensors[0]
    C.check_float(names[0], first)
    for name, t in zip(names[1:], tensors[1:]):
        C.check_float(name, t)
        C.check_same_device(name, t, names[0], first)
        C.check_same_shape(name, t, names[0], first)
    C.check_mask("mask", mask)
    C.check_same_device("mask", mask, names[0], first)
    C.check_same_shape("mask", mask, names[0], first)


def check_reduction(reduction):
    if not isinstance(reduction, str):
        raise TypeError(f"reduction must be a str, one of {REDUCTIONS}, got {type(reduction).__name__}")
    C.check_choice("reduction", reduction, REDUCTIONS)


def one_dtype(x, old, other):
    """The tensors in one dtype, the promoted one when they differ (autograd casts the gradient back)."""
    if x.dtype == old.dtype == other.dtype:
        return x, old, other
    dtype = torch.promote_types(torch.promote_types(x.dtype, old.dtype), other.dtype)
    return x.to(dtype), old.to(dtype), other.to(dtype)


def check_mask_values(mask):
    """The data check of the Python backends, where checks run (the C++ kernels check as they read)."""
    if C.checks_enabled(mask):
        C.check_binary_mask(mask)


def check_kernel_inputs(names, tensors, mask, reduction=0):
    """The contract of the Triton kernels (the C++ ones check theirs in C++): float tensors of one
    shape, dtype and device with a time dim, a mask like them, a reduction code."""
    check_masked(names, tensors, mask)
    check_mask_values(mask)
    C.check_code("reduction", reduction, REDUCTIONS)
    C.check_has_time_dim(names[0], tensors[0])
    for name, t in zip(names[1:], tensors[1:]):
        C.check_same_dtype(name, t, names[0], tensors[0])


def rows(x):
    """[..., T] -> a contiguous [R, T] view."""
    return x.contiguous().view(-1, x.shape[-1])


def loss_fake(x, n_stats):
    """Outputs of a loss forward for tracing: loss, stats, token_grad, row_scale."""
    f32 = dict(dtype=torch.float32)
    rows = x.numel() // x.shape[-1]
    return x.new_empty((), **f32), x.new_empty(n_stats, **f32), x.new_empty(x.shape, **f32), x.new_empty(rows, **f32)


@triton_kernel("ppo_loss_backward")
def _(grad_loss, token_grad, row_scale, dtype):
    C.check_has_time_dim("token_grad", token_grad)
    rows_of_tokens = token_grad.numel() // max(token_grad.shape[-1], 1)
    if grad_loss.numel() != 1 or token_grad.dtype != torch.float32 or row_scale.numel() != rows_of_tokens:
        raise ValueError("ppo_loss_backward takes a 1-element grad_loss, float32 token_grad [..., T] and row_scale "
                         "with one entry per row of T tokens")
    grad = triton_kernels().ppo_loss_backward(grad_loss.float(), rows(token_grad), row_scale.contiguous(), dtype)
    return grad.view(token_grad.shape)


@fake_kernel("ppo_loss_backward")
def _(grad_loss, token_grad, row_scale, dtype):
    return torch.empty_like(token_grad, dtype=dtype, memory_format=torch.contiguous_format)
