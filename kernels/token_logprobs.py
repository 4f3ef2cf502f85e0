"""Token log-probabilities and entropy over a large vocabulary, one program per row.

With d_j = (z_j - max) / temperature (shifted by the row max before the scaling, so that low
temperatures lose no precision): log p_j = d_j - log_sum, log_sum = log sum_j exp(d_j).
Forward: a single pass over the row keeps, per lane, a running max m, sum_e = sum exp(d) and
sum_ed = sum exp(d) * d relative to it; the lanes are merged at the end, and
entropy = log_sum - sum_ed / sum_e. sum_e is kept as (entries at the max) + (the rest), so that
log_sum = log(ties) + log1p(rest / ties) keeps its precision for sharply peaked rows. Only
(max, log_sum) are saved per row.
Backward: p = exp(log p) is recomputed and grad_logits written once:
  d logprob / dz_j = [j == label] - p_j,    d entropy / dz_j = -p_j * (log p_j + entropy),
both times 1/temperature. At the label, 1 - p is -expm1(log p): it keeps its precision when p ~ 1.
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
def _forward_kernel(logits_ptr, labels_ptr, logprobs_ptr, entropy_ptr, stats_ptr,
                    rows_per_batch, stride_batch, stride_row, V, inv_temperature, ignore_index,
                    WITH_ENTROPY: tl.constexpr, BLOCK_V: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    label = tl.load(labels_ptr + row)
    ignored = label == ignore_index
    limit = tl.where(ignored, 0, V)  # ignored rows read nothing
    start = _row_start(logits_ptr, row, rows_per_batch, stride_batch, stride_row)
    # per lane: the running max m; the exp sum relative to it split as ties (entries at m, exp(0) = 1
    # each) + rest (the others), so that a rest far below 1 keeps its precision; and sum_ed
    m = tl.full([BLOCK_V], float("-inf"), tl.float32)
    ties = tl.zeros([BLOCK_V], tl.float32)
    rest = tl.zeros([BLOCK_V], tl.float32)
    sum_ed = tl.zeros([BLOCK_V], tl.float32)
    for v0 in range(0, limit, BLOCK_V):
        cols = v0 + tl.arange(0, BLOCK_V)
        z = tl.load(start + cols, mask=cols < V, other=float("-inf")).to(tl.float32)
        m_new = tl.maximum(m, z)
        ref = tl.where(m_new == float("-inf"), 0.0, m_new)  # finite even before a lane sees a value
        scale = tl.exp((m - ref) * inv_temperature)  # 1 unless the max grew
        d = (z - ref) * inv_temperature
        e = tl.exp(d)
        if WITH_ENTROPY:
            shift = tl.where(ties + rest > 0, (m - ref) * inv_temperature, 0.0)  # moving the origin of sum_ed to ref
            sum_ed = (sum_ed + shift * (ties + rest)) * scale + tl.where(e > 0, e * d, 0.0)
        grew = m_new > m  # the old max's entries join the rest
        rest = tl.where(grew, (ties + rest) * scale, rest) + tl.where(d != 0, e, 0.0)
        ties = tl.where(grew, 0.0, ties) + (d == 0).to(tl.float32)
        m = m_new
    row_max = tl.max(m, axis=0)
    lane_shift = (m - row_max) * inv_temperature
    weight = tl.exp(lane_shift)
    at_max = m == row_max
    total_ties = tl.sum(tl.where(at_max, ties, 0.0), axis=0)
    total_rest = tl.sum(tl.where(at_max, rest, (ties + rest) * weight), axis=0)
    total = total_ties + total_rest
    log_sum = tl.log(total_ties) + _log1p(total_rest / total_ties)
    # An out-of-range label (unchecked on GPU unless FASTRLHF_CHECK=1) reads nothing and yields nan.
    z_label = tl.load(start + label, mask=(label >= 0) & (label < limit), other=float("nan")).to(tl.float32)
    tl.store(logprobs_ptr + row, tl.where(ignored, 0.0, (z_label - row_max) * inv_temperature - log_sum))
    tl.store(stats_ptr + 2 * row, tl.where(ignored, 0.0, row_max))
    tl.store(stats_ptr + 2 * row + 1, tl.where(ignored, 0.0, log_sum))
    if WITH_ENTROPY:
        moved = tl.where(ties + rest > 0, (sum_ed + lane_shift * (ties + rest)) * weight, 0.0)
        entropy = log_sum - tl.sum(moved, axis=0) / total
        tl.store(entropy_ptr + row, tl.where(ignored, 0.0, entropy))


@triton.jit
def _log1p(x):
    """log(1 + x) without losing a small x to the rounding of 1 + x (Goldberg's correction)."""
    u = 1.0 + x
    return tl.where(u == 1.0, x, tl.log(u) * (x / (u - 1.0)))


@triton.jit
def _expm1(x):
    """exp(x) - 1 without the cancellation near 0 (a Taylor polynomial there)."""
    series = x * (1.0 + x * (0.5 + x * (1.0 / 6.0 + x * (1.0 / 24.0 + x * (1.0 / 120.0)))))
    return tl.where(tl.abs(x) < 0.1, series, tl.exp(x) - 1.0)


@triton.jit
def _backward_kernel(logits_ptr, labels_ptr, stats_ptr, entropy_ptr, grad_logprobs_ptr, grad_entropy_ptr,
                     grad_logits_ptr, rows_per_batch, stride_batch, stride_row, V, inv_temperature,
                     ignore_index, HAS_GRAD_LOGPROBS: tl.constexpr, HAS_GRAD_ENTROPY: tl.constexpr,
                     BLOCK_V: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    label = tl.load(labels_ptr + row)
    ignored = label == ignore_index
    limit = tl.where(ignored, 0, V)
    start = _row_start(logits_ptr, row, rows_per_batch, stride_batch, stride_row)
    out = grad_logits_ptr + row * V
    row_max = tl.load(stats_ptr + 2 * row)
    log_sum = tl.load(stats_ptr + 2 * row + 1)
    # Ignored rows get zero gradient: their upstream gradients are taken as 0 and nothing is read.
    g_logprob = 0.0
    if HAS_GRAD_LOGPROBS:
        g_logprob = tl.where(ignored, 0.0, tl.load(grad_logprobs_ptr + row))
    g_entropy = 0.0
    entropy = 0.0
    if HAS_GRAD_ENTROPY:
        g_entropy = tl.where(ignored, 0.0, tl.load(grad_entropy_ptr + row))
        entropy = tl.load(entropy_ptr + row)
    # d logprob / dz at the label: 1 - p = -expm1(log p), once per row
    z_label = tl.load(start + label, mask=(label >= 0) & (label < limit), other=float("-inf")).to(tl.float32)
    at_label = -g_logprob * _expm1((z_label - row_max) * inv_temperature - log_sum)
    for v0 in range(0, V, BLOCK_V):
        cols = v0 + tl.arange(0, BLOCK_V)
        z = tl.load(start + cols, mask=cols < limit, other=float("-inf")).to(tl.float32)
        logp = (z - row_max) * inv_temperature - log_sum
        p = tl.exp(logp)
        grad = tl.where(cols == label, at_label, -g_logprob * p)
        if HAS_GRAD_ENTROPY:
            grad -= g_entropy * tl.where(p > 0, p * (logp + entropy), 0.0)
        tl.store(out + cols, (grad * inv_temperature).to(grad_logits_ptr.dtype.element_ty), mask=cols < V)


def _launch_config(V):
    block = min(triton.next_power_of_2(V), _MAX_BLOCK_V)
    return block, (8 if block >= 2048 else 4)


def token_logprobs_forward(logits, labels, temperature, ignore_index, with_entropy):
    """logits [B, T, V] (unit stride along V), labels [B*T] int64 contiguous -> (logprobs, entropy,
    stats), float32 [B*T], [B*T] (or [0]) and [B*T, 2] (per row: max logit, log_sum)."""
    n = labels.numel()
    logprobs = torch.empty(n, device=logits.device, dtype=torch.float32)
    stats = torch.empty((n, 2), device=logits.device, dtype=torch.float32)
    entropy = torch.empty(n if with_entropy else 0, device=logits.device, dtype=torch.float32)
    block, warps = _launch_config(logits.shape[2])
    _forward_kernel[(n,)](logits, labels, logprobs, entropy, stats, logits.shape[1], logits.stride(0),
                          logits.stride(1), logits.shape[2], 1.0 / temperature, ignore_index,
                          WITH_ENTROPY=with_entropy, BLOCK_V=block, num_warps=warps)
    return logprobs, entropy, stats


def token_logprobs_backward(logits, labels, stats, entropy, grad_logprobs, grad_entropy, temperature, ignore_index):
    """Gradient of the forward's outputs w.r.t. logits, as a contiguous [B*T, V] tensor of logits' dtype."""
    n, V = labels.numel(), logits.shape[2]
    grad_logits = torch.empty((n, V), device=logits.device, dtype=logits.dtype)
    block, warps = _launch_config(V)
    _backward_kernel[(n,)](logits, labels, stats, entropy, grad_logprobs, grad_entropy, grad_logits,
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
                              entropy_ptr=torch.float32, stats_ptr=torch.float32, **rows))
        for has_logprobs, has_entropy in ((True, False), (False, True), (True, True)):  # autograd: at least one
            specs.append(spec(name.format("backward"), _backward_kernel, warps,
                              dict(HAS_GRAD_LOGPROBS=has_logprobs, HAS_GRAD_ENTROPY=has_entropy, BLOCK_V=block_v),
                              stats_ptr=torch.float32, entropy_ptr=torch.float32, grad_logits_ptr=dtype,
                              grad_logprobs_ptr=torch.float32 if has_logprobs else None,
                              grad_entropy_ptr=torch.float32 if has_entropy else None, **rows))
    return specs
