"""Pieces shared by the masked reductions: masked_mean, masked_whiten and the two PPO losses.

Every reduction to a few numbers runs in two levels without atomics: programs stride over blocks
(or rows), each writes partial results, and one program finalizes them. An input of at most
SINGLE_PROGRAM_MAX elements gets ONE program that also finalizes, all in one launch: at RLHF batch
sizes (64 x 1024 tokens) the launches, not the bytes, are what costs.

Moments (masked_mean over everything, masked_whiten): the count n, mean and M2 = sum (x - mean)^2 of
each block (two passes over registers), merged with Chan's formula. Never E[x^2] - E[x]^2, which
cancels catastrophically when |mean| >> std. In float64: M2 of float32 data overflows float32 as
soon as |x - mean| passes ~1e19 (values near 1e30 gave nan); the data stays float32 in memory.

PPO losses: one rows kernel computes the per-token loss and d loss_token / d input in a single pass,
saves that gradient (masked, float32) and writes per-row sums [count, loss, stat_0, ...]. The
finalize turns the row sums into the loss, the stats (masked token means) and one gradient scale per
row, so the backward of both losses is one elementwise kernel:
    grad_input = grad_loss * token_grad * row_scale[row].
Forward: 1 launch up to SINGLE_PROGRAM_MAX tokens, else 2 (rows, finalize). Backward: 1 launch.
"""
import itertools

import torch
import triton
import triton.language as tl

from fastrlhf.codes import REDUCTIONS

from ._specs import FLOAT_DTYPES, powers_of_two, short, spec

SINGLE_PROGRAM_MAX = 65536  # elements; tests lower it to exercise the partials path
MAX_PROGRAMS = 512  # about 4 per H100 SM; more would only add partials to merge
MOMENTS_BLOCK = 4096
PARTIALS_BLOCK = 512  # partials merged per step
FINALIZE_BLOCK, FINALIZE_WARPS = 1024, 8  # the loss finalize: rows per step, and its lone program's warps
# Registers per thread of the loss forward: without a cap ptxas (Triton 3.6, 3.8) picks 64 for some tiles and
# spills a few words (tests/test_gpu_compile.py); 128 keeps 2 programs of 8 warps, or one of 16, per SM.
LOSS_MAXNREG = 128
BACKWARD_TILE = 2048  # elements per program of the loss backward
_STATS_PAD = tl.constexpr(4)  # room for the most statistics a loss has (3), a power of two
TOKEN_MEAN, SEQ_MEAN_TOKEN_MEAN, SEQ_MEAN_TOKEN_SUM = (tl.constexpr(REDUCTIONS.index(name)) for name in REDUCTIONS)


def num_programs(n_blocks, n_elements):
    """How many programs a two-level reduction launches: 1 (which then finalizes) for small inputs."""
    return 1 if n_elements <= SINGLE_PROGRAM_MAX else min(n_blocks, MAX_PROGRAMS)


def num_warps(block):
    """Enough threads for a block of `block` elements: a lone program needs many bytes in flight."""
    return 16 if block >= 8192 else (8 if block >= 4096 else 4)


# ---- moments -------------------------------------------------------------------------------------

@triton.jit
def _combine(n, mean, m2):
    """The moments of the union of a vector of disjoint sets (n, mean, M2 each, float64)."""
    count = tl.sum(n, axis=0)
    center = tl.sum(n * mean, axis=0) / tl.maximum(count, 1.0)
    deviation = mean - center  # empty sets carry mean 0: finite, and weighted by n = 0
    return count, center, tl.sum(m2 + n * deviation * deviation, axis=0)


@triton.jit
def _merge(n_a, mean_a, m2_a, n_b, mean_b, m2_b):
    """Chan's formula: the moments of the union of two disjoint sets."""
    n = n_a + n_b
    delta = mean_b - mean_a
    weight_b = n_b / tl.maximum(n, 1.0)
    return n, mean_a + delta * weight_b, m2_a + m2_b + delta * delta * n_a * weight_b


@triton.jit
def masked_moments(x_ptr, mask_ptr, N, first_block, block_step, BLOCK: tl.constexpr):
    """Moments of the masked elements of blocks first_block, first_block + block_step, ... of x[N]."""
    n, mean, m2 = tl.zeros([], tl.float64), tl.zeros([], tl.float64), tl.zeros([], tl.float64)
    for start in range(first_block * BLOCK, N, block_step * BLOCK):
        offs = start + tl.arange(0, BLOCK)
        inside = offs < N
        m = tl.load(mask_ptr + offs, mask=inside, other=0) != 0
        x = tl.where(m, tl.load(x_ptr + offs, mask=inside, other=0.0).to(tl.float64), 0.0)
        block_n, block_mean, block_m2 = _combine(m.to(tl.float64), x, 0.0)
        n, mean, m2 = _merge(n, mean, m2, block_n, block_mean, block_m2)
    return n, mean, m2


@triton.jit
def merge_partials(partials_ptr, P, BLOCK: tl.constexpr):
    """Moments of everything from the [3, P] float64 partials (rows n, mean, M2) of _moments_kernel."""
    n, mean, m2 = tl.zeros([], tl.float64), tl.zeros([], tl.float64), tl.zeros([], tl.float64)
    for start in range(0, P, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        inside = offs < P
        block_n, block_mean, block_m2 = _combine(tl.load(partials_ptr + offs, mask=inside, other=0.0),
                                                 tl.load(partials_ptr + P + offs, mask=inside, other=0.0),
                                                 tl.load(partials_ptr + 2 * P + offs, mask=inside, other=0.0))
        n, mean, m2 = _merge(n, mean, m2, block_n, block_mean, block_m2)
    return n, mean, m2


@triton.jit
def _moments_kernel(x_ptr, mask_ptr, partials_ptr, N, BLOCK: tl.constexpr):
    program, programs = tl.program_id(0), tl.num_programs(0)
    n, mean, m2 = masked_moments(x_ptr, mask_ptr, N, program, programs, BLOCK)
    tl.store(partials_ptr + program, n)
    tl.store(partials_ptr + programs + program, mean)
    tl.store(partials_ptr + 2 * programs + program, m2)


def moments_config():
    return dict(BLOCK=MOMENTS_BLOCK, PARTIALS_BLOCK=PARTIALS_BLOCK, num_warps=num_warps(MOMENTS_BLOCK))


def moments_partials(x, mask):
    """(partials [3, P], P, config): for inputs too big for one program, launches the per-program
    moments (1 launch); else launches nothing and P = 0 (the caller's single program reads x itself).
    config: the block sizes and num_warps for the caller's kernel (BLOCK, PARTIALS_BLOCK)."""
    config = moments_config()
    programs = num_programs(triton.cdiv(x.numel(), MOMENTS_BLOCK), x.numel())
    partials = torch.empty((3, programs), device=x.device, dtype=torch.float64)
    if programs == 1:
        return partials, 0, config
    _moments_kernel[(programs,)](x, mask, partials, x.numel(), BLOCK=MOMENTS_BLOCK, num_warps=config["num_warps"])
    return partials, programs, config


# ---- PPO losses ----------------------------------------------------------------------------------

@triton.jit
def _loss_rows(x_ptr, old_ptr, other_ptr, mask_ptr, token_grad_ptr, partials_ptr, R, T, clip_low, clip_high,
               dual_clip, TOKEN_LOSS: tl.constexpr, N_STATS: tl.constexpr, BLOCK_R: tl.constexpr,
               BLOCK_T: tl.constexpr):
    """Per token: TOKEN_LOSS(x, old, other, clip_low, clip_high, dual_clip) -> (loss, d loss / d x, stat_0,
    stat_1, stat_2), where other is the advantage (policy) or the return (value), [clip_low, clip_high]
    bounds the clipped quantity (the ratio, or v - old) and dual_clip (policy only; inf: none) caps the
    loss. Saves the masked gradient and writes the row sums partials[k, row], k = count, loss, stat_0, ..."""
    for row0 in range(tl.program_id(0) * BLOCK_R, R, tl.num_programs(0) * BLOCK_R):
        rows = row0 + tl.arange(0, BLOCK_R)
        count = tl.zeros([BLOCK_R], tl.float32)
        loss = tl.zeros([BLOCK_R], tl.float32)
        stat_0 = tl.zeros([BLOCK_R], tl.float32)
        stat_1 = tl.zeros([BLOCK_R], tl.float32)
        stat_2 = tl.zeros([BLOCK_R], tl.float32)
        for t0 in range(0, T, BLOCK_T):
            cols = t0 + tl.arange(0, BLOCK_T)
            offs = rows[:, None].to(tl.int64) * T + cols[None, :]
            inside = (rows[:, None] < R) & (cols[None, :] < T)
            m = tl.load(mask_ptr + offs, mask=inside, other=0) != 0
            x = tl.load(x_ptr + offs, mask=inside, other=0.0).to(tl.float32)
            old = tl.load(old_ptr + offs, mask=inside, other=0.0).to(tl.float32)
            other = tl.load(other_ptr + offs, mask=inside, other=0.0).to(tl.float32)
            token_loss, grad, s0, s1, s2 = TOKEN_LOSS(x, old, other, clip_low, clip_high, dual_clip)
            tl.store(token_grad_ptr + offs, tl.where(m, grad, 0.0), mask=inside)
            # tl.where, not a product with the mask: garbage at masked-out tokens must not leak in as nan
            count += tl.sum(m.to(tl.float32), axis=1)
            loss += tl.sum(tl.where(m, token_loss, 0.0), axis=1)
            stat_0 += tl.sum(tl.where(m, s0, 0.0), axis=1)
            stat_1 += tl.sum(tl.where(m, s1, 0.0), axis=1)
            stat_2 += tl.sum(tl.where(m, s2, 0.0), axis=1)
        inside = rows < R
        tl.store(partials_ptr + rows, count, mask=inside)
        tl.store(partials_ptr + R + rows, loss, mask=inside)
        tl.store(partials_ptr + 2 * R + rows, stat_0, mask=inside)
        if N_STATS > 1:
            tl.store(partials_ptr + 3 * R + rows, stat_1, mask=inside)
            tl.store(partials_ptr + 4 * R + rows, stat_2, mask=inside)


@triton.jit
def _finalize_loss(partials_ptr, R, loss_ptr, stats_ptr, row_scale_ptr, N_STATS: tl.constexpr,
                   REDUCTION: tl.constexpr, BLOCK: tl.constexpr):
    """Row sums -> the reduced loss, the stats (masked token means) and each row's gradient scale.
    REDUCTION: a code of REDUCTIONS."""
    k = tl.arange(0, _STATS_PAD)
    counts = tl.zeros([BLOCK], tl.float32)
    losses = tl.zeros([BLOCK], tl.float32)  # sum of row losses, or of row mean losses
    nonempty = tl.zeros([BLOCK], tl.float32)
    stats = tl.zeros([_STATS_PAD, BLOCK], tl.float32)
    for start in range(0, R, BLOCK):
        rows = start + tl.arange(0, BLOCK)
        inside = rows < R
        count = tl.load(partials_ptr + rows, mask=inside, other=0.0)
        loss = tl.load(partials_ptr + R + rows, mask=inside, other=0.0)
        counts += count
        losses += loss / tl.maximum(count, 1.0) if REDUCTION == SEQ_MEAN_TOKEN_MEAN else loss
        nonempty += (count > 0).to(tl.float32)
        stats += tl.load(partials_ptr + (2 + k[:, None]) * R + rows[None, :],
                         mask=(k[:, None] < N_STATS) & inside[None, :], other=0.0)
    total = tl.maximum(tl.sum(counts, axis=0), 1.0)
    sequences = tl.maximum(tl.sum(nonempty, axis=0), 1.0)  # sequences without a token do not count
    tl.store(loss_ptr, tl.sum(losses, axis=0) / (total if REDUCTION == TOKEN_MEAN else sequences))
    tl.store(stats_ptr + k, tl.sum(stats, axis=1) / total, mask=k < N_STATS)
    for start in range(0, R, BLOCK):
        rows = start + tl.arange(0, BLOCK)
        inside = rows < R
        count = tl.load(partials_ptr + rows, mask=inside, other=0.0)
        if REDUCTION == TOKEN_MEAN:
            scale = tl.zeros([BLOCK], tl.float32) + 1.0 / total
        elif REDUCTION == SEQ_MEAN_TOKEN_MEAN:
            scale = tl.where(count > 0, 1.0 / (tl.maximum(count, 1.0) * sequences), 0.0)
        else:
            scale = tl.zeros([BLOCK], tl.float32) + 1.0 / sequences
        tl.store(row_scale_ptr + rows, scale, mask=inside)


@triton.jit
def _loss_forward_kernel(x_ptr, old_ptr, other_ptr, mask_ptr, token_grad_ptr, partials_ptr, loss_ptr, stats_ptr,
                         row_scale_ptr, R, T, clip_low, clip_high, dual_clip, TOKEN_LOSS: tl.constexpr,
                         N_STATS: tl.constexpr,
                         REDUCTION: tl.constexpr, ROWS: tl.constexpr, FINALIZE: tl.constexpr,
                         BLOCK_R: tl.constexpr, BLOCK_T: tl.constexpr, FINALIZE_BLOCK: tl.constexpr):
    """ROWS: the rows pass; FINALIZE: the finalize (both in one program for small inputs)."""
    if ROWS:
        _loss_rows(x_ptr, old_ptr, other_ptr, mask_ptr, token_grad_ptr, partials_ptr, R, T, clip_low, clip_high,
                   dual_clip, TOKEN_LOSS, N_STATS, BLOCK_R, BLOCK_T)
    if FINALIZE:
        if ROWS:
            tl.debug_barrier()  # the program's own partials stores must be visible to all its threads
        _finalize_loss(partials_ptr, R, loss_ptr, stats_ptr, row_scale_ptr, N_STATS, REDUCTION, FINALIZE_BLOCK)


def loss_forward(token_loss, n_stats, x, old, other, mask, clip_low, clip_high, dual_clip, reduction):
    """Forward of a PPO loss over [R, T] inputs, reduction a code of REDUCTIONS -> (loss, stats [n_stats],
    token_grad [R, T], row_scale [R]). 1 launch up to SINGLE_PROGRAM_MAX tokens, else 2 (rows with many
    programs, then the finalize)."""
    R, T = x.shape
    block_r, block_t, programs, warps = _rows_launch(R, T)
    f32 = dict(device=x.device, dtype=torch.float32)
    loss, stats = torch.empty((), **f32), torch.empty(n_stats, **f32)
    token_grad, row_scale = torch.empty((R, T), **f32), torch.empty(R, **f32)
    partials = torch.empty((2 + n_stats, R), **f32)
    args = (x, old, other, mask, token_grad, partials, loss, stats, row_scale, R, T, clip_low, clip_high, dual_clip)
    rows, finalize = dict(BLOCK_R=block_r, BLOCK_T=block_t), dict(REDUCTION=reduction)
    launch = dict(maxnreg=LOSS_MAXNREG, TOKEN_LOSS=token_loss, N_STATS=n_stats, FINALIZE_BLOCK=FINALIZE_BLOCK)
    if programs == 1:
        _loss_forward_kernel[(1,)](*args, ROWS=True, FINALIZE=True, num_warps=warps, **launch, **rows, **finalize)
    else:  # the constexprs a pass does not read are fixed, so that it compiles once for all of their values
        _loss_forward_kernel[(programs,)](*args, ROWS=True, FINALIZE=False, num_warps=warps, **launch, **rows,
                                          **UNUSED_BY_ROWS)
        _loss_forward_kernel[(1,)](*args, ROWS=False, FINALIZE=True, num_warps=FINALIZE_WARPS, **launch,
                                   **UNUSED_BY_FINALIZE, **finalize)
    return loss, stats, token_grad, row_scale


UNUSED_BY_ROWS, UNUSED_BY_FINALIZE = dict(REDUCTION=0), dict(BLOCK_R=1, BLOCK_T=1)


def _rows_launch(R, T):
    """(BLOCK_R, BLOCK_T, programs, num_warps) of the rows pass over [R, T] tokens. 4 tokens per thread, 8 in
    the many-program launch when a tile is one row; more spill (tests/test_gpu_compile.py), since a tile of
    several rows needs 64-bit addresses per token and a lone program also holds the finalize. Rows are at
    least 16 wide: [BLOCK_R, 1] tiles spill."""
    warps = 16 if R * T <= SINGLE_PROGRAM_MAX else 8
    block_t = max(triton.next_power_of_2(T), 16)
    tile = 32 * warps * (8 if warps == 8 and block_t >= 32 * 8 * 8 else 4)
    block_t = min(block_t, tile)
    block_r = tile // block_t
    return block_r, block_t, num_programs(triton.cdiv(R, block_r), R * T), warps


def loss_forward_specs(name, token_loss, n_stats):
    """The compile specs of loss_forward for one loss (the contract in kernels/__init__.py): the rows pass
    of every tile _rows_launch can pick (R and T over powers of two reach each), with the finalize in the
    same program or in a second launch."""
    tiles = set()
    for R, T in itertools.product(powers_of_two(1 << 17), repeat=2):  # past every cap and threshold
        block_r, block_t, programs, warps = _rows_launch(R, T)
        tiles.add((block_r, block_t, programs == 1, warps))
    specs = []
    for dtype in FLOAT_DTYPES:
        types = dict(x_ptr=dtype, old_ptr=dtype, other_ptr=dtype, mask_ptr=torch.bool, token_grad_ptr=torch.float32,
                     partials_ptr=torch.float32, loss_ptr=torch.float32, stats_ptr=torch.float32,
                     row_scale_ptr=torch.float32, R="i32", T="i32", clip_low="fp32", clip_high="fp32", dual_clip="fp32")
        launch = dict(TOKEN_LOSS=token_loss, N_STATS=n_stats, FINALIZE_BLOCK=FINALIZE_BLOCK)

        def add(num_warps, programs_per_sm, **constexprs):
            specs.append(spec(f"{name} {short(dtype)}", _loss_forward_kernel, num_warps, launch | constexprs,
                              programs_per_sm, LOSS_MAXNREG, **types))

        finalizes = [dict(REDUCTION=code) for code in range(len(REDUCTIONS))]
        for block_r, block_t, one_program, warps in sorted(tiles):
            rows = dict(BLOCK_R=block_r, BLOCK_T=block_t)
            for finalize in finalizes if one_program else [UNUSED_BY_ROWS]:
                add(warps, 1 if one_program else 2, ROWS=True, FINALIZE=one_program, **rows, **finalize)
        for finalize in finalizes:
            add(FINALIZE_WARPS, 1, ROWS=False, FINALIZE=True, **UNUSED_BY_FINALIZE, **finalize)
    return specs


@triton.jit
def _loss_backward_kernel(grad_loss_ptr, token_grad_ptr, row_scale_ptr, grad_ptr, R, T,
                          BLOCK_R: tl.constexpr, BLOCK_T: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.program_id(1) * BLOCK_T + tl.arange(0, BLOCK_T)
    offs = rows[:, None].to(tl.int64) * T + cols[None, :]
    inside = (rows[:, None] < R) & (cols[None, :] < T)
    scale = tl.load(grad_loss_ptr) * tl.load(row_scale_ptr + rows, mask=rows < R, other=0.0)
    grad = tl.load(token_grad_ptr + offs, mask=inside, other=0.0) * scale[:, None]
    tl.store(grad_ptr + offs, grad.to(grad_ptr.dtype.element_ty), mask=inside)


def ppo_loss_backward(grad_loss, token_grad, row_scale, dtype):
    """grad_input [R, T] of `dtype` = grad_loss * token_grad * row_scale[row]; 1 launch, one tile per program."""
    R, T = token_grad.shape
    grad = torch.empty((R, T), device=token_grad.device, dtype=dtype)
    block_r, block_t = _backward_tile(T)
    grid = (triton.cdiv(R, block_r), triton.cdiv(T, block_t))
    _loss_backward_kernel[grid](grad_loss, token_grad, row_scale, grad, R, T, BLOCK_R=block_r, BLOCK_T=block_t,
                                num_warps=num_warps(BACKWARD_TILE))
    return grad


def _backward_tile(T):
    block_t = min(triton.next_power_of_2(T), BACKWARD_TILE)
    return BACKWARD_TILE // block_t, block_t


def compile_specs():
    """The moments partials and the loss backward (the contract in kernels/__init__.py); the loss forward
    is in each loss's module (loss_forward_specs)."""
    specs = [spec(f"moments_partials {short(dtype)}", _moments_kernel, moments_config()["num_warps"],
                  dict(BLOCK=MOMENTS_BLOCK), x_ptr=dtype, mask_ptr=torch.bool, partials_ptr=torch.float64, N="i32")
             for dtype in FLOAT_DTYPES]
    for dtype, T in itertools.product(FLOAT_DTYPES, powers_of_two(BACKWARD_TILE)):
        block_r, block_t = _backward_tile(T)
        specs.append(spec(f"ppo_loss_backward {short(dtype)}", _loss_backward_kernel, num_warps(BACKWARD_TILE),
                          dict(BLOCK_R=block_r, BLOCK_T=block_t), grad_loss_ptr=torch.float32,
                          token_grad_ptr=torch.float32, row_scale_ptr=torch.float32, grad_ptr=dtype, R="i32", T="i32"))
    return specs
