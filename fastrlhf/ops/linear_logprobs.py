"""linear_logprobs: token_logprobs of the LM head's logits, from the last hidden states and the head's
weight, without ever holding the [tokens, V] logits.

The rows are taken chunk_size at a time: the chunk's logits are one matmul, then token_logprobs' row
kernel reads them once; only O(rows) statistics survive the chunk. The backward recomputes each chunk's
logits (one more matmul: the price of not keeping [tokens, V]), writes their gradient (a second chunk
buffer), and accumulates the weight and bias gradients across chunks in float32. Peak extra memory:
two [chunk, V] buffers and the float32 weight gradient, whatever the number of tokens.
torch.ops.fastrlhf.linear_logprobs: CPU kernels and autograd in csrc/bindings/linear_logprobs.cpp, the
CUDA kernel below (cuBLAS matmuls around the Triton row kernels of kernels/token_logprobs.py).
"""
import math
import numbers

import torch

from . import _checks as C
from .. import reference
from ._backend import fake_kernel, operator, triton_kernel, triton_kernels, use_reference
from .token_logprobs import _check_temperature

_op = operator("linear_logprobs")
# logits per chunk by default: 128 MB in float32 whatever V (220 rows at V = 151936; the matmuls lose
# speed with fewer rows: on a 2-core AVX-512 CPU 128 rows cost 1.25x and 256 rows 1.1x the time of 512)
_CHUNK_ELEMENTS = 1 << 25


def default_chunk_size(vocab_size):
    return max(1, _CHUNK_ELEMENTS // vocab_size)


def _chunk_logits(h, weight, bias, logit_scale, softcap):
    """softcap(logit_scale * h @ weight.T + bias) for rows h [c, H]: [c, V] in the inputs' dtype, one
    rounding per step as in the reference."""
    z = torch.mm(h, weight.t())
    if logit_scale != 1.0:
        z.mul_(logit_scale)
    if bias is not None:
        z.add_(bias)
    if math.isfinite(softcap):
        z.div_(softcap).tanh_().mul_(softcap)
    return z


def _chunk_rows(h, labels, rows, ignore_index):
    """h[rows] with the rows whose label is ignore_index set to 0: never read (see the reference)."""
    return h[rows].masked_fill((labels[rows] == ignore_index).unsqueeze(1), 0)


def _chunks(n, chunk_size):
    for begin in range(0, n, chunk_size):
        yield slice(begin, min(n, begin + chunk_size))


def _check_kernel_inputs(hidden, weight, bias, labels, temperature, logit_scale, softcap, chunk_size):
    """The contract of the registered op, as the C++ kernels check it (softcap: inf for none)."""
    _check_inputs(hidden, weight, bias, labels)
    if labels.dtype != torch.int64:
        raise TypeError(f"labels must be int64, got {labels.dtype}")
    _check_temperature(temperature)
    _check_number("logit_scale", logit_scale)
    if not softcap > 0:
        raise ValueError(f"softcap must be > 0 (inf for none), got {softcap}")
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be > 0, got {chunk_size}")


@triton_kernel("linear_logprobs")
def _(hidden, weight, bias, labels, temperature, ignore_index, with_entropy, logit_scale, softcap, chunk_size):
    _check_kernel_inputs(hidden, weight, bias, labels, temperature, logit_scale, softcap, chunk_size)
    _check_labels(labels, weight.shape[0], ignore_index)
    n, kernels = labels.numel(), triton_kernels()
    h, flat = hidden.reshape(n, -1), labels.contiguous().view(-1)
    f32 = dict(device=hidden.device, dtype=torch.float32)
    logprobs, stats = torch.empty(n, **f32), torch.empty((n, 2), **f32)
    entropy = torch.empty(n if with_entropy else 0, **f32)
    for rows in _chunks(n, chunk_size):
        z = _chunk_logits(_chunk_rows(h, flat, rows, ignore_index), weight, bias, logit_scale, softcap)
        lp, ent, st = kernels.token_logprobs_forward(z[None], flat[rows], temperature, ignore_index, with_entropy)
        logprobs[rows], stats[rows] = lp, st
        if with_entropy:
            entropy[rows] = ent
    return logprobs.view(labels.shape), entropy.view(labels.shape if with_entropy else (0,)), stats.view(*labels.shape, 2)


@triton_kernel("linear_logprobs_backward")
def _(hidden, weight, bias, labels, stats, entropy, grad_logprobs, grad_entropy, temperature, ignore_index,
      logit_scale, softcap, chunk_size, output_mask):
    _check_kernel_inputs(hidden, weight, bias, labels, temperature, logit_scale, softcap, chunk_size)
    _check_labels(labels, weight.shape[0], ignore_index)
    per_row = {"grad_logprobs": grad_logprobs, "grad_entropy": grad_entropy,
               "entropy": entropy if grad_entropy is not None else None}
    for name, t in per_row.items():
        if t is not None and t.shape != labels.shape:
            raise ValueError(f"{name} must have the shape of labels {tuple(labels.shape)}, got {tuple(t.shape)}")
    if stats.shape != (*labels.shape, 2):
        raise ValueError(f"stats must have shape {(*labels.shape, 2)}, got {tuple(stats.shape)}")
    n, kernels = labels.numel(), triton_kernels()
    h, flat = hidden.reshape(n, -1), labels.contiguous().view(-1)
    def flat_float(t):  # the kernels read contiguous float32 (a gradient may be an expanded scalar)
        return None if t is None else t.float().contiguous().view(-1)

    stats, entropy = flat_float(stats).view(n, 2), flat_float(entropy)
    g_logprobs, g_entropy = flat_float(grad_logprobs), flat_float(grad_entropy)
    none = hidden.new_empty(0)
    grad_hidden = torch.empty_like(h) if output_mask[0] else None
    grad_weight = torch.zeros(weight.shape, device=weight.device, dtype=torch.float32) if output_mask[1] else None
    grad_bias = torch.zeros(weight.shape[0], device=weight.device, dtype=torch.float32) \
        if output_mask[2] and bias is not None else None
    for rows in _chunks(n, chunk_size):
        hc = _chunk_rows(h, flat, rows, ignore_index)
        z = _chunk_logits(hc, weight, bias, logit_scale, softcap)
        grad_z = kernels.token_logprobs_backward(
            z[None], flat[rows], stats[rows], entropy[rows] if g_entropy is not None else entropy,
            None if g_logprobs is None else g_logprobs[rows], None if g_entropy is None else g_entropy[rows],
            temperature, ignore_index)
        if math.isfinite(softcap):  # d softcap(x) / dx = 1 - (z / softcap)^2
            grad_z.mul_(z.div_(softcap).square_().neg_().add_(1.0))
        if grad_hidden is not None:
            torch.mm(grad_z, weight, out=grad_hidden[rows])
            if logit_scale != 1.0:
                grad_hidden[rows] *= logit_scale
        if grad_weight is not None:  # each chunk's product in the input dtype, their sum in float32
            grad_weight.add_(torch.mm(grad_z.t(), hc), alpha=logit_scale)
        if grad_bias is not None:
            grad_bias.add_(grad_z.sum(0, dtype=torch.float32))
    return (none if grad_hidden is None else grad_hidden.view(hidden.shape),
            none if grad_weight is None else grad_weight.to(weight.dtype),
            none if grad_bias is None else grad_bias.to(weight.dtype))


@fake_kernel("linear_logprobs")
def _(hidden, weight, bias, labels, temperature, ignore_index, with_entropy, logit_scale, softcap, chunk_size):
    f32 = dict(dtype=torch.float32)
    entropy = hidden.new_empty(labels.shape if with_entropy else (0,), **f32)
    return hidden.new_empty(labels.shape, **f32), entropy, hidden.new_empty((*labels.shape, 2), **f32)


@fake_kernel("linear_logprobs_backward")
def _(hidden, weight, bias, labels, stats, entropy, grad_logprobs, grad_entropy, temperature, ignore_index,
      logit_scale, softcap, chunk_size, output_mask):
    needed = [hidden.new_empty(t.shape) if wanted and t is not None else hidden.new_empty(0)
              for wanted, t in zip(output_mask, (hidden, weight, bias))]
    return tuple(needed)


def _check_inputs(hidden, weight, bias, labels):
    C.check_float("hidden", hidden)
    C.check_float("weight", weight)
    C.check_int("labels", labels)
    C.check_same_device("weight", weight, "hidden", hidden)
    C.check_same_device("labels", labels, "hidden", hidden)
    if weight.dim() != 2 or weight.shape[1] != hidden.shape[-1]:
        raise ValueError(f"weight must be [V, H] with H = hidden.shape[-1] = {hidden.shape[-1]}, "
                         f"got shape {tuple(weight.shape)}")
    C.check_same_dtype("weight", weight, "hidden", hidden)
    if bias is not None:
        C.check_float("bias", bias)
        C.check_same_device("bias", bias, "hidden", hidden)
        C.check_same_dtype("bias", bias, "hidden", hidden)
        if bias.shape != weight.shape[:1]:
            raise ValueError(f"bias must have shape [V] = [{weight.shape[0]}], got {tuple(bias.shape)}")
    if labels.shape != hidden.shape[:-1]:
        raise ValueError(f"labels must have shape hidden.shape[:-1] = {tuple(hidden.shape[:-1])}, "
                         f"got {tuple(labels.shape)}")


def _check_labels(labels, vocab_size, ignore_index):
    if C.checks_enabled(labels):
        C.check_labels_values(labels, vocab_size, ignore_index)


def _check_number(name, value, positive=False):
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number or None, got {type(value).__name__}")
    if not math.isfinite(value) or (positive and value <= 0):
        raise ValueError(f"{name} must be finite{' and > 0' if positive else ''}, got {value}")


def linear_logprobs(hidden, weight, labels, *, bias=None, temperature=1.0, ignore_index=-100, return_entropy=False,
                    logit_scale=None, softcap=None, chunk_size=None):
    """token_logprobs(softcap(logit_scale * hidden @ weight.T + bias), labels, ...), without the logits.

    hidden [..., H] and weight [V, H] (the LM head's, possibly tied to the input embeddings) and bias [V]
    of one float dtype; labels [...] of any integer dtype. Returns float32 log-probs (0 at ignore_index)
    and, with return_entropy=True, the entropy of the same tempered distribution. Differentiable w.r.t.
    hidden, weight and bias through both outputs; the weight and bias gradients are summed over chunks in
    float32. chunk_size: rows whose logits exist at once (default: 2^25 / V).
    """
    _check_inputs(hidden, weight, bias, labels)
    _check_temperature(temperature)
    _check_number("logit_scale", logit_scale)
    _check_number("softcap", softcap, positive=True)
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size <= 0):
        raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size!r}")
    if use_reference():
        _check_labels(labels, weight.shape[0], ignore_index)
        return reference.linear_logprobs(hidden, weight, labels, bias=bias, temperature=temperature,
                                         ignore_index=ignore_index, return_entropy=return_entropy,
                                         logit_scale=logit_scale, softcap=softcap)
    if labels.dtype != torch.int64:
        labels = labels.long()
    logprobs, entropy, _ = _op(hidden, weight, bias, labels, float(temperature), int(ignore_index),
                               bool(return_entropy), 1.0 if logit_scale is None else float(logit_scale),
                               math.inf if softcap is None else float(softcap),
                               chunk_size or default_chunk_size(weight.shape[0]))
    return (logprobs, entropy) if return_entropy else logprobs
