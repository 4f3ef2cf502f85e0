"""token_logprobs: log-probabilities of the labels, and optionally the entropy, from [..., V] logits.

The forward reads the logits once and keeps O(rows) statistics (the row max and log-sum-exp); the
backward reads them again and writes grad_logits once. No float32 [..., V] tensor is ever made.
torch.ops.fastrlhf.token_logprobs: CPU kernel and autograd in csrc/bindings/token_logprobs.cpp,
Triton kernel (CUDA) below, launched from kernels/token_logprobs.py.
"""
import math

import torch

from . import _checks as C
from .. import reference
from ._backend import fake_kernel, operator, triton_kernel, triton_kernels, use_reference

_op = operator("token_logprobs")
_FLOAT32_MAX = torch.finfo(torch.float32).max


def _rows(logits):
    """[..., V] -> [B, T, V] with unit stride along V, sharing storage where the leading dims allow
    (logits[:, :-1] does)."""
    if logits.stride(-1) != 1 and logits.shape[-1] != 1:
        logits = logits.contiguous()
    vocab = logits.shape[-1]
    inner = logits.shape[-2] if logits.dim() > 1 else 1
    for shape in ((1, -1, vocab), (-1, inner, vocab)):
        try:
            return logits.view(shape)
        except RuntimeError:
            pass
    return logits.contiguous().view(1, -1, vocab)


def _check_temperature(temperature):
    if not (math.isfinite(temperature) and temperature > 0 and 1 / temperature <= _FLOAT32_MAX):
        raise ValueError(f"temperature must be finite and > 0 with 1 / temperature finite in float32, "
                         f"got {temperature}")


def _check_kernel_inputs(logits, labels):
    """The contract of the Triton kernels (the C++ ones check theirs in C++)."""
    C.check_float("logits", logits)
    C.check_same_device("labels", labels, "logits", logits)
    if labels.dtype != torch.int64 or labels.shape != logits.shape[:-1]:
        raise ValueError(f"labels must be int64 of shape {tuple(logits.shape[:-1])}, got {labels.dtype} "
                         f"{tuple(labels.shape)}")


def _check_values(logits, labels, ignore_index):
    """The data check of the Python backends, where checks run (the C++ kernels check as they read)."""
    if C.checks_enabled(labels):
        C.check_labels_values(labels, logits.shape[-1], ignore_index)


@triton_kernel("token_logprobs")
def _(logits, labels, temperature, ignore_index, with_entropy):
    _check_kernel_inputs(logits, labels)
    _check_temperature(temperature)
    _check_values(logits, labels, ignore_index)
    logprobs, entropy, stats = triton_kernels().token_logprobs_forward(
        _rows(logits), labels.contiguous().view(-1), temperature, ignore_index, with_entropy)
    entropy = entropy.view(labels.shape if with_entropy else (0,))
    return logprobs.view(labels.shape), entropy, stats.view(*labels.shape, 2)


@triton_kernel("token_logprobs_backward")
def _(logits, labels, stats, entropy, grad_logprobs, grad_entropy, temperature, ignore_index):
    _check_kernel_inputs(logits, labels)
    _check_temperature(temperature)
    per_row = {"grad_logprobs": grad_logprobs, "grad_entropy": grad_entropy}
    if grad_entropy is not None:
        per_row["entropy"] = entropy
    for name, t in per_row.items():
        if t is not None and t.shape != labels.shape:
            raise ValueError(f"{name} must have the shape of labels {tuple(labels.shape)}, got {tuple(t.shape)}")
    if stats.shape != (*labels.shape, 2):
        raise ValueError(f"stats must have shape {(*labels.shape, 2)}, got {tuple(stats.shape)}")

    def flat(grad):
        return None if grad is None else grad.float().contiguous().view(-1)

    grad = triton_kernels().token_logprobs_backward(
        _rows(logits), labels.contiguous().view(-1), stats.contiguous().view(-1, 2), entropy.contiguous().view(-1),
        flat(grad_logprobs), flat(grad_entropy), temperature, ignore_index)
    return grad.view(logits.shape)


@fake_kernel("token_logprobs")
def _(logits, labels, temperature, ignore_index, with_entropy):
    f32 = dict(dtype=torch.float32)
    entropy = logits.new_empty(labels.shape if with_entropy else (0,), **f32)
    return logits.new_empty(labels.shape, **f32), entropy, logits.new_empty((*labels.shape, 2), **f32)


@fake_kernel("token_logprobs_backward")
def _(logits, labels, stats, entropy, grad_logprobs, grad_entropy, temperature, ignore_index):
    return torch.empty_like(logits, memory_format=torch.contiguous_format)


def token_logprobs(logits, labels, *, temperature=1.0, ignore_index=-100, return_entropy=False):
    """log_softmax(logits / temperature) at `labels`, float32, 0 where labels == ignore_index.

    logits [..., V] (float32/bfloat16/float16), labels [...] of any integer dtype. With
    return_entropy=True returns (logprobs, entropy), the entropy of the same tempered distribution
    (0 at ignored positions, whose logits are never read). Differentiable w.r.t. logits through both
    outputs.
    """
    C.check_float("logits", logits)
    C.check_int("labels", labels)
    C.check_same_device("labels", labels, "logits", logits)
    if labels.shape != logits.shape[:-1]:
        raise ValueError(f"labels must have shape logits.shape[:-1] = {tuple(logits.shape[:-1])}, "
                         f"got {tuple(labels.shape)}")
    _check_temperature(temperature)
    if use_reference():
        _check_values(logits, labels, ignore_index)
        return reference.token_logprobs(logits, labels, temperature=temperature, ignore_index=ignore_index,
                                        return_entropy=return_entropy)
    if labels.dtype != torch.int64:
        labels = labels.long()
    logprobs, entropy, _ = _op(logits, labels, float(temperature), int(ignore_index), bool(return_entropy))
    return (logprobs, entropy) if return_entropy else logprobs
