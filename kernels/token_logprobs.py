"""Token log-probabilities and entropy over a large vocabulary, one program per row.

Forward: a single pass over the row keeps, per lane, a running max m, sum_e = sum exp(z - m) and
sum_ez = sum exp(z - m) * (z - m); the lanes are merged at the end. From those,
lse = m + log(sum_e) and entropy = log(sum_e) - sum_ez / sum_e. Only lse and entropy are saved.
Backward: p = exp(z - lse) is recomputed and grad_logits written once:
  d logprob / dz_j = [j == label] - p_j,    d entropy / dz_j = -p_j * (log p_j + entropy),
both times 1/temperature because z = logits / temperature.
"""
import itertools

import torch
import triton
import triton.language as tl

from ._specs import FLOAT_DTYPES, powers_of_two, short, spec

_MAX_BLOCK_V = 4096


@triton.jit
def _row_start(logits_ptr, row, rows_per_batch, stride_batch, stride_row):
    # logits is a [B, T, V] view: a row index r is (r // T, r % T).
    return logits_ptr + (row // rows_per_batch) * stride_batch + (row % rows_per_batch) * stride_row


@triton.jit
def _forward_kernel(logits_ptr, labels_ptr, logprobs_ptr, entropy_ptr, lse_ptr,
                    rows_per_batch, stride_batch, stride_row, V, inv_temperature, ignore_index,
                    WITH_ENTROPY: tl.constexpr, BLOCK_V: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    label = tl.load(labels_ptr + row)
    ignored = label == ignore_index
    limit = tl.where(ignored, 0, V)  # ignored rows read nothing
    start = _row_start(logits_ptr, row, rows_per_batch, stride_batch, stride_row)
    m = tl.full([BLOCK_V], float("-inf"), tl.float32)
    sum_e = tl.zeros([BLOCK_V], tl.float32)
    sum_ez = tl.zeros([BLOCK_V], tl.float32)
    for v0 in range(0, limit, BLOCK_V):
        cols = v0 + tl.arange(0, BLOCK_V)
        z = tl.load(start + cols, mask=cols < V, other=float("-inf")).to(tl.float32) * inv_temperature
        m_new = tl.maximum(m, z)
        ref = tl.where(m_new == float("-inf"), 0.0, m_new)  # finite even before a lane sees a value
        scale = tl.exp(m - ref)
        e = tl.exp(z - ref)
        if WITH_ENTROPY:
            shift = tl.where(sum_e > 0, m - ref, 0.0)  # moving the origin of sum_ez from m to ref
            sum_ez = (sum_ez + shift * sum_e) * scale + tl.where(e > 0, e * (z - ref), 0.0)
        sum_e = sum_e * scale + e
        m = m_new
    row_max = tl.max(m, axis=0)
    weight = tl.exp(m - row_max)
    total = tl.sum(sum_e * weight, axis=0)
    lse = row_max + tl.log(total)
    # An out-of-range label (unchecked on GPU unless FASTRLHF_CHECK=1) reads nothing and yields nan.
    z_label = tl.load(start + label, mask=(label >= 0) & (label < limit), other=float("nan"))
    z_label = z_label.to(tl.float32) * inv_temperature
    tl.store(logprobs_ptr + row, tl.where(ignored, 0.0, z_label - lse))
    tl.store(lse_ptr + row, tl.where(ignored, 0.0, lse))
    if WITH_ENTROPY:
        moved = tl.where(sum_e > 0, (sum_ez + (m - row_max) * sum_e) * weight, 0.0)
        entropy = tl.log(total) - tl.sum(moved, axis=0) / total
        tl.store(entropy_ptr + row, tl.where(ignored, 0.0, entropy))


@triton.jit
def _backward_kernel(logits_ptr, labels_ptr, lse_ptr, entropy_ptr, grad_logprobs_ptr, grad_entropy_ptr,
                     grad_logits_ptr, rows_per_batch, stride_batch, stride_row, V, inv_temperature,
                     ignore_index, HAS_GRAD_LOGPROBS: tl.constexpr, HAS_GRAD_ENTROPY: tl.constexpr,
                     BLOCK_V: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    label = tl.load(labels_ptr + row)
    ignored = label == ignore_index
    limit = tl.where(ignored, 0, V)
    start = _row_start(logits_ptr, row, rows_per_batch, stride_batch, stride_row)
    out = grad_logits_ptr + row * V
    lse = tl.load(lse_ptr + row)
    # Ignored rows get zero gradient: their upstream gradients are taken as 0 and nothing is read.
    g_logprob = 0.0
    if HAS_GRAD_LOGPROBS:
        g_logprob = tl.where(ignored, 0.0, tl.load(grad_logprobs_ptr + row))
    g_entropy = 0.0
    entropy = 0.0
    if HAS_GRAD_ENTROPY:
        g_entropy = tl.where(ignored, 0.0, tl.load(grad_entropy_ptr + row))
        entropy = tl.load(entropy_ptr + row)
    for v0 in range(0, V, BLOCK_V):
        cols = v0 + tl.arange(0, BLOCK_V)
        z = tl.load(start + cols, mask=cols < limit, other=float("-inf")).to(tl.float32) * inv_temperature
        logp = z - lse
        p = tl.exp(logp)
        grad = -g_logprob * p
        if HAS_GRAD_ENTROPY:
            grad -= g_entropy * tl.where(p > 0, p * (logp + entropy), 0.0)
        if HAS_GRAD_LOGPROBS:
            grad += tl.where(cols == label, g_logprob, 0.0)
        tl.store(out + cols, (grad * inv_temperature).to(grad_logits_ptr.dtype.element_ty), mask=cols < V)


def _launch_config(V):
    block = min(triton.next_power_of_2(V), _MAX_BLOCK_V)
    return block, (8 if block >= 2048 else 4)


def token_logprobs_forward(logits, labels, temperature, ignore_index, with_entropy):
    """logits [B, T, V] (last dim contiguous), labels [B*T] int64 -> (logprobs, entropy, lse), float32 [B*T]."""
    n = labels.numel()
    logprobs = torch.empty(n, device=logits.device, dtype=torch.float32)
    lse = torch.empty_like(logprobs)
    entropy = torch.empty(n if with_entropy else 0, device=logits.device, dtype=torch.float32)
    block, warps = _launch_config(logits.shape[2])
    _forward_kernel[(n,)](logits, labels, logprobs, entropy, lse, logits.shape[1], logits.stride(0),
                          logits.stride(1), logits.shape[2], 1.0 / temperature, ignore_index,
                          WITH_ENTROPY=with_entropy, BLOCK_V=block, num_warps=warps)
    return logprobs, entropy, lse


def token_logprobs_backward(logits, labels, lse, entropy, grad_logprobs, grad_entropy, temperature, ignore_index):
    """Gradient of the forward's outputs w.r.t. logits, as a contiguous [B*T, V] tensor of logits' dtype."""
    n, V = labels.numel(), logits.shape[2]
    grad_logits = torch.empty((n, V), device=logits.device, dtype=logits.dtype)
    block, warps = _launch_config(V)
    _backward_kernel[(n,)](logits, labels, lse, entropy, grad_logprobs, grad_entropy, grad_logits,
                           logits.shape[1], logits.stride(0), logits.stride(1), V, 1.0 / temperature,
                           ignore_index, HAS_GRAD_LOGPROBS=grad_logprobs is not None,
                           HAS_GRAD_ENTROPY=grad_entropy is not None, BLOCK_V=block, num_warps=warps)
    return grad_logits


def compile_specs():
    """Every specialization the launchers can pick (the contract in kernels/__init__.py). stride_batch is
    i64 when the logits hold 2^31 elements or more (the ops view contiguous logits as [1, N, V])."""
    specs = []
    for dtype, block, stride_batch in itertools.product(FLOAT_DTYPES, powers_of_two(_MAX_BLOCK_V), ("i32", "i64")):
        block_v, warps = _launch_config(block)
        rows = dict(logits_ptr=dtype, labels_ptr=torch.int64, rows_per_batch="i32", stride_batch=stride_batch,
                    stride_row="i32", V="i32", inv_temperature="fp32", ignore_index="i32")
        name = f"token_logprobs_{{}} {short(dtype)} stride_batch={stride_batch}"
        for with_entropy in (False, True):
            specs.append(spec(name.format("forward"), _forward_kernel, warps,
                              dict(WITH_ENTROPY=with_entropy, BLOCK_V=block_v), logprobs_ptr=torch.float32,
                              entropy_ptr=torch.float32, lse_ptr=torch.float32, **rows))
        for has_logprobs, has_entropy in ((True, False), (False, True), (True, True)):  # autograd: at least one
            specs.append(spec(name.format("backward"), _backward_kernel, warps,
                              dict(HAS_GRAD_LOGPROBS=has_logprobs, HAS_GRAD_ENTROPY=has_entropy, BLOCK_V=block_v),
                              lse_ptr=torch.float32, entropy_ptr=torch.float32, grad_logits_ptr=dtype,
                              grad_logprobs_ptr=torch.float32 if has_logprobs else None,
                              grad_entropy_ptr=torch.float32 if has_entropy else None, **rows))
    return specs
