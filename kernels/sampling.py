"""Sampling one token per row of [B, V] logits: temperature, top-k, top-p, inverse-CDF sampling with the
row's own uniform number, and the sampled token's log-prob, in one program per row. No sort of the
vocabulary and no torch.multinomial.

With z = logits / temperature, the kept set of a row is {z >= t}: t is the k-th largest z for top-k, then,
for top-p, the largest z whose {z >= .} holds at least top_p of the top-k mass (HF's order and tie rule:
tied values are kept together). Values are compared through an int32 key that orders like the float, so
the search for t is exact: each pass over the row counts the elements, and sums their mass, at PIVOTS
evenly spaced keys at once, and narrows the interval that holds t to one of the PIVOTS parts (at most
8 passes for 32-bit keys with 16 pivots; usually fewer, as a search stops once its interval holds a
single element). The passes over a row:
  1. the running max and sum of exp(z - max) (online softmax), the smallest key and the first argmax;
  2. only for a row with top-k or top-p: the threshold search;
  3. the first kept token whose running mass exceeds uniform * (kept mass); its log-prob is
     z - max - log(kept mass).
temperature 0 is greedy: the first argmax, log-prob 0 (the point mass it is drawn from).
"""
import torch
import triton
import triton.language as tl

from ._specs import FLOAT_DTYPES, short, spec

PIVOTS = tl.constexpr(16)  # keys tried per read of the row in the threshold search: the interval shrinks 16-fold
# Registers per thread. Left to choose, ptxas (CUDA 12.9) took 72-80 for some tiles and parked a few long-lived
# per-row values (a setting, a saved predicate) on an 8-16 B stack; under a cap it budgets up to the cap. Nothing
# spills even at 96 (Triton 3.6 to 3.9); 128 leaves room and still fits 2 programs of 8 warps per SM.
MAXNREG = 128
_INT32_MAX = tl.constexpr(2**31 - 1)


def _config(block_v, num_warps):
    # The search reads one element per thread per step (SEARCH_V), so its [PIVOTS, SEARCH_V] counts and masses
    # take 2 * PIVOTS registers per thread; with two elements per thread the kernel spills at 128.
    return dict(BLOCK_V=block_v, SEARCH_V=32 * num_warps, num_warps=num_warps, maxnreg=MAXNREG)


_SMALL, _LARGE = _config(128, 4), _config(1024, 8)  # a row that fits one small block, or any other


def launch_config(vocab_size):
    """The launch options for rows of `vocab_size` logits: the launcher and compile_specs() both ask here."""
    return _SMALL if vocab_size <= _SMALL["BLOCK_V"] else _LARGE


@triton.jit
def _order_key(z):
    # float32 -> int32 that orders like the float: negative floats get their magnitude bits flipped.
    bits = z.to(tl.int32, bitcast=True)
    return bits ^ ((bits >> 31) & 0x7FFFFFFF)


@triton.jit
def _load_tile(row_ptr, v0, V, inv_temperature, BLOCK_V: tl.constexpr):
    cols = v0 + tl.arange(0, BLOCK_V)
    valid = cols < V
    z = tl.load(row_ptr + cols, mask=valid, other=float("-inf")).to(tl.float32) * inv_temperature
    return cols, valid, z


@triton.jit
def _threshold(row_ptr, V, inv_temperature, row_max, lo, hi, count_lo, count_hi, mass_lo, need,
               BY_MASS: tl.constexpr, SEARCH_V: tl.constexpr):
    """The kept set {key >= lo} for the largest key whose set is big enough: count >= need (top-k) or
    mass >= need (top-p). Invariant: lo is big enough, hi is not; count_* and mass_lo are the count and
    mass of {key >= .}. Returns (lo, count_lo, mass_lo) once [lo, hi) holds one element or one key (the
    threshold is then that element's key, and {key >= lo} is its set), or top-k's set has exactly k."""
    j = tl.arange(0, PIVOTS)
    searching = (hi - lo > 1) & (count_lo - count_hi > 1)
    if not BY_MASS:
        searching = searching & (count_lo != need)
    while searching:
        step = hi - lo  # up to 2^32 in int64; the pivots lie in [lo, hi), so they are int32 keys like the row's
        pivots = (lo + (step * j) // PIVOTS).to(tl.int32)  # pivots[0] == lo
        # Each thread counts, and sums the mass of, its own elements at or above each pivot over the whole row;
        # the threads are summed once per pass. (Summing [PIVOTS, BLOCK_V] tiles once per tile took ~3x the
        # instructions per element, shuffles and barriers included.) A thread's count is exact in float32
        # (at most V / 128 <= 2^24) and compiles to a select and an add; an int count took three instructions.
        counts = tl.zeros([PIVOTS, SEARCH_V], tl.float32)
        masses = tl.zeros([PIVOTS, SEARCH_V], tl.float32)
        for v0 in range(0, V, SEARCH_V):
            cols, valid, z = _load_tile(row_ptr, v0, V, inv_temperature, SEARCH_V)
            above = (_order_key(z)[None, :] >= pivots[:, None]) & valid[None, :]
            counts += tl.where(above, 1.0, 0.0)
            masses += tl.where(above, tl.exp(z - row_max)[None, :], 0.0)
        counts = tl.sum(counts.to(tl.int32), axis=1)
        masses = tl.sum(masses, axis=1)
        if BY_MASS:
            enough = masses >= need
        else:
            enough = counts >= need
        best = tl.max(tl.where(enough, j, 0), axis=0)  # lo counts as enough even if rounding says otherwise
        has_next = best + 1 < PIVOTS
        count_hi = tl.where(has_next, tl.sum(tl.where(j == best + 1, counts, 0), axis=0), count_hi)
        count_lo = tl.sum(tl.where(j == best, counts, 0), axis=0)
        mass_lo = tl.sum(tl.where(j == best, masses, 0.0), axis=0)
        hi = tl.where(has_next, lo + (step * (best + 1)) // PIVOTS, hi)
        lo = lo + (step * best) // PIVOTS
        searching = (hi - lo > 1) & (count_lo - count_hi > 1)
        if not BY_MASS:
            searching = searching & (count_lo != need)
    return lo, count_lo, mass_lo


@triton.jit
def _sample_kernel(logits_ptr, stride_row, uniforms_ptr, temperature_ptr, top_k_ptr, top_p_ptr,
                   tokens_ptr, logprobs_ptr, V, BLOCK_V: tl.constexpr, SEARCH_V: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    row_ptr = logits_ptr + row * stride_row
    temperature = tl.load(temperature_ptr + row)
    top_k = tl.load(top_k_ptr + row)
    top_p = tl.load(top_p_ptr + row)
    sampling = temperature > 0  # else greedy
    inv_temperature = tl.where(sampling, 1.0 / temperature, 1.0)

    # 1. max, sum of exp(z - max), smallest key, first argmax: per lane, merged at the end.
    m = tl.full([BLOCK_V], float("-inf"), tl.float32)
    s = tl.zeros([BLOCK_V], tl.float32)
    key_min = tl.full([BLOCK_V], _INT32_MAX, tl.int32)
    first_max = tl.zeros([BLOCK_V], tl.int32)
    for v0 in range(0, V, BLOCK_V):
        cols, valid, z = _load_tile(row_ptr, v0, V, inv_temperature, BLOCK_V)
        first_max = tl.where(z > m, cols, first_max)  # strict: a lane keeps its first maximum
        m_new = tl.maximum(m, z)
        ref = tl.where(m_new == float("-inf"), 0.0, m_new)  # finite even before a lane sees a value
        s = s * tl.exp(m - ref) + tl.exp(z - ref)
        m = m_new
        key_min = tl.minimum(key_min, tl.where(valid, _order_key(z), _INT32_MAX))
    row_max = tl.max(m, axis=0)
    argmax = tl.min(tl.where(m == row_max, first_max, V), axis=0)

    # 2. The kept set {key >= lo}: everything, then top-k's, then top-p's within it.
    lo = tl.min(key_min, axis=0).to(tl.int64)
    top = _order_key(row_max).to(tl.int64) + 1  # no element has this key or a larger one
    count_lo = tl.full([], 0, tl.int32) + V
    none = tl.full([], 0, tl.int32)
    mass_lo = tl.sum(s * tl.exp(m - row_max), axis=0)
    if sampling & (top_k > 0) & (top_k < V):
        lo, count_lo, mass_lo = _threshold(row_ptr, V, inv_temperature, row_max, lo, top, count_lo, none, mass_lo,
                                           top_k.to(tl.int32), False, SEARCH_V)
    if sampling & (top_p < 1.0):
        lo, count_lo, mass_lo = _threshold(row_ptr, V, inv_temperature, row_max, lo, top, count_lo, none, mass_lo,
                                           top_p * mass_lo, True, SEARCH_V)

    # 3. Inverse CDF over the kept tokens in vocabulary order: the first whose running mass exceeds
    # uniform * mass; if rounding leaves the target above the total, the last token of nonzero mass.
    token = argmax
    logprob = tl.zeros([], tl.float32)
    if sampling:
        target = tl.load(uniforms_ptr + row) * mass_lo
        running = tl.zeros([], tl.float32)
        found = tl.full([], 0, tl.int32) + V
        last = tl.zeros([], tl.int32)
        for v0 in range(0, V, BLOCK_V):
            cols, valid, z = _load_tile(row_ptr, v0, V, inv_temperature, BLOCK_V)
            kept = valid & (_order_key(z) >= lo.to(tl.int32))
            e = tl.where(kept, tl.exp(z - row_max), 0.0)
            cdf = running + tl.cumsum(e, axis=0)
            found = tl.minimum(found, tl.min(tl.where(kept & (cdf > target), cols, V), axis=0))
            last = tl.maximum(last, tl.max(tl.where(e > 0, cols, 0), axis=0))
            running += tl.sum(e, axis=0)
        token = tl.where(found < V, found, last)
        z_token = tl.load(row_ptr + token).to(tl.float32) * inv_temperature
        logprob = z_token - row_max - tl.log(mass_lo)
    tl.store(tokens_ptr + row, token.to(tl.int64))
    tl.store(logprobs_ptr + row, logprob)


def sample_tokens(logits, uniforms, temperature, top_k, top_p):
    """logits [B, V] (last dim contiguous); uniforms, temperature, top_p float32 [B]; top_k int64 [B]
    -> (tokens int64 [B], logprobs float32 [B])."""
    rows, vocab = logits.shape
    tokens = torch.empty(rows, dtype=torch.long, device=logits.device)
    logprobs = torch.empty(rows, dtype=torch.float32, device=logits.device)
    _sample_kernel[(rows,)](logits, logits.stride(0), uniforms, temperature, top_k, top_p, tokens, logprobs, vocab,
                            **launch_config(vocab))
    return tokens, logprobs


def compile_specs():
    """Every specialization the launcher can pick (the contract in kernels/__init__.py). The row stride is an
    i64 when it reaches 2^31 (the last position of a long prompt's [B, P, V] logits)."""
    return [spec(f"sample_tokens {short(dtype)} stride_row={stride}", _sample_kernel, config["num_warps"],
                 dict(BLOCK_V=config["BLOCK_V"], SEARCH_V=config["SEARCH_V"]), maxnreg=config["maxnreg"],
                 logits_ptr=dtype, stride_row=stride, uniforms_ptr=torch.float32, temperature_ptr=torch.float32,
                 top_k_ptr=torch.int64, top_p_ptr=torch.float32, tokens_ptr=torch.int64, logprobs_ptr=torch.float32,
                 V="i32")
            for dtype in FLOAT_DTYPES for config in (_SMALL, _LARGE) for stride in ("i32", "i64")]
