"""token_logprobs: log-probabilities of the labels, and optionally the entropy, from [..., V] logits.

The forward reads the logits once and keeps O(rows) statistics (log-sum-exp, entropy); the
backward reads them again and writes grad_logits once. No float32 [..., V] tensor is ever made.
"""
from typing import Optional

import torch
from torch import Tensor

from . import _checks as C
from .. import reference
from ._backend import backend_name, checks_enabled, kernels_for


def _rows(logits):
    """[..., V] -> [B, T, V] sharing storage where the leading dims allow it (logits[:, :-1] does)."""
    if logits.stride(-1) != 1:
        logits = logits.contiguous()
    vocab = logits.shape[-1]
    inner = logits.shape[-2] if logits.dim() > 1 else 1
    for shape in ((1, -1, vocab), (-1, inner, vocab)):
        try:
            return logits.view(shape)
        except RuntimeError:
            pass
    return logits.contiguous().view(1, -1, vocab)


@torch.library.custom_op("fastrlhf::token_logprobs", mutates_args=())
def _forward(logits: Tensor, labels: Tensor, temperature: float, ignore_index: int,
             with_entropy: bool) -> tuple[Tensor, Tensor, Tensor]:
    labels = labels.reshape(-1)
    if checks_enabled(logits.device):
        C.check_labels_values(labels, logits.shape[-1], ignore_index)
    kernels = kernels_for(logits.device)
    return kernels.token_logprobs_forward(_rows(logits), labels, temperature, ignore_index, with_entropy)


@_forward.register_fake
def _(logits, labels, temperature, ignore_index, with_entropy):
    logprobs = logits.new_empty(labels.numel(), dtype=torch.float32)
    entropy = logits.new_empty(labels.numel() if with_entropy else 0, dtype=torch.float32)
    return logprobs, entropy, torch.empty_like(logprobs)


@torch.library.custom_op("fastrlhf::token_logprobs_backward", mutates_args=())
def _backward(logits: Tensor, labels: Tensor, lse: Tensor, entropy: Tensor, grad_logprobs: Optional[Tensor],
              grad_entropy: Optional[Tensor], temperature: float, ignore_index: int) -> Tensor:
    grad = kernels_for(logits.device).token_logprobs_backward(
        _rows(logits), labels.reshape(-1), lse, entropy, grad_logprobs, grad_entropy, temperature, ignore_index)
    return grad.view(logits.shape)


@_backward.register_fake
def _(logits, labels, lse, entropy, grad_logprobs, grad_entropy, temperature, ignore_index):
    return torch.empty_like(logits, memory_format=torch.contiguous_format)


def _setup_context(ctx, inputs, output):
    logits, labels, temperature, ignore_index, _ = inputs
    _, entropy, lse = output
    ctx.save_for_backward(logits, labels, lse, entropy)
    ctx.temperature, ctx.ignore_index = temperature, ignore_index
    ctx.set_materialize_grads(False)  # an unused output's gradient stays None: no work for it


def _flat(grad):
    return None if grad is None else grad.reshape(-1).float().contiguous()


def _autograd_backward(ctx, grad_logprobs, grad_entropy, _grad_lse):
    logits, labels, lse, entropy = ctx.saved_tensors
    if grad_logprobs is None and grad_entropy is None:
        return None, None, None, None, None
    grad = _backward(logits, labels, lse, entropy, _flat(grad_logprobs), _flat(grad_entropy),
                     ctx.temperature, ctx.ignore_index)
    return grad, None, None, None, None


_forward.register_autograd(_autograd_backward, setup_context=_setup_context)


def token_logprobs(logits, labels, *, temperature=1.0, ignore_index=-100, return_entropy=False):
    """log_softmax(logits / temperature) at `labels`, float32, 0 where labels == ignore_index.

    logits [..., V] (float32/bfloat16/float16), labels [...] integer. With return_entropy=True returns
    (logprobs, entropy), the entropy of the same tempered distribution (0 at ignored positions).
    Differentiable w.r.t. logits through both outputs.
    """
    C.check_float("logits", logits)
    C.check_int("labels", labels)
    C.check_same_device("labels", labels, "logits", logits)
    if labels.shape != logits.shape[:-1]:
        raise ValueError(f"labels must have shape logits.shape[:-1] = {tuple(logits.shape[:-1])}, "
                         f"got {tuple(labels.shape)}")
    C.check_positive("temperature", temperature)
    if backend_name(logits.device) == "reference":
        if checks_enabled(logits.device):
            C.check_labels_values(labels, logits.shape[-1], ignore_index)
        return reference.token_logprobs(logits, labels, temperature=temperature, ignore_index=ignore_index,
                                        return_entropy=return_entropy)
    logprobs, entropy, _ = _forward(logits, labels.long(), float(temperature), int(ignore_index),
                                    bool(return_entropy))
    logprobs = logprobs.view(labels.shape)
    return (logprobs, entropy.view(labels.shape)) if return_entropy else logprobs
