"""Pieces shared by masked_mean, masked_whiten and the PPO losses: input checks and normalisation, and
the autograd of the losses, whose backward is one elementwise kernel (see kernels/_masked_reduction.py):
    grad_input = grad_loss * token_grad * row_scale[row],
with token_grad (d token loss / d input, float32) and row_scale saved by the forward.
"""
import torch
from torch import Tensor

from . import _checks as C
from ._backend import kernels_for


def check_masked(names, tensors, mask):
    """Float tensors of one shape and device, the first one's, and a mask like them."""
    C.check_float(names[0], tensors[0])
    for name, t in zip(names[1:], tensors[1:]):
        C.check_float(name, t)
        C.check_same_device(name, t, names[0], tensors[0])
        C.check_same_shape(name, t, names[0], tensors[0])
    C.check_mask("mask", mask)
    C.check_same_device("mask", mask, names[0], tensors[0])
    C.check_same_shape("mask", mask, names[0], tensors[0])


def check_reduction(reduction, choices):
    if not isinstance(reduction, str):
        raise TypeError(f"reduction must be a str, one of {choices}, got {type(reduction).__name__}")
    C.check_choice("reduction", reduction, choices)


def flat_mask(mask, shape):
    """The mask as a contiguous bool tensor viewed as `shape`."""
    return C.as_bool_mask(mask).contiguous().view(shape)


def loss_rows(*tensors):
    """[..., T] float inputs -> contiguous [R, T] views of one dtype (the promoted one when they differ;
    autograd casts the gradient back)."""
    dtype = tensors[0].dtype
    for t in tensors[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    T = tensors[0].shape[-1] if tensors[0].dim() else 1
    return tuple(t.to(dtype).contiguous().view(-1, T) for t in tensors)


def loss_fake(x, n_stats):
    """Outputs of a loss forward for tracing: loss, stats, token_grad, row_scale."""
    f32 = dict(dtype=torch.float32)
    return x.new_empty((), **f32), x.new_empty(n_stats, **f32), x.new_empty(x.shape, **f32), x.new_empty(x.shape[0], **f32)


@torch.library.custom_op("fastrlhf::ppo_loss_backward", mutates_args=())
def _loss_backward(grad_loss: Tensor, token_grad: Tensor, row_scale: Tensor, dtype: torch.dtype) -> Tensor:
    return kernels_for(token_grad.device).ppo_loss_backward(grad_loss, token_grad, row_scale, dtype)


@_loss_backward.register_fake
def _(grad_loss, token_grad, row_scale, dtype):
    return torch.empty_like(token_grad, dtype=dtype)


def _setup_context(ctx, inputs, output):
    _, stats, token_grad, row_scale = output
    ctx.mark_non_differentiable(stats, token_grad, row_scale)
    ctx.set_materialize_grads(False)  # no zero tensors for the outputs without gradient
    ctx.save_for_backward(token_grad, row_scale)
    ctx.dtype, ctx.n_inputs = inputs[0].dtype, len(inputs)


def _backward(ctx, grad_loss, *_):
    token_grad, row_scale = ctx.saved_tensors
    grad = None if grad_loss is None else _loss_backward(grad_loss.float(), token_grad, row_scale, ctx.dtype)
    return (grad,) + (None,) * (ctx.n_inputs - 1)  # only the first input (logprobs, values) gets a gradient


def register_loss_autograd(forward_op):
    """A loss forward custom op (input, ..., options) -> (loss, stats, token_grad, row_scale) becomes
    differentiable w.r.t. its first input through the shared backward."""
    forward_op.register_autograd(_backward, setup_context=_setup_context)
