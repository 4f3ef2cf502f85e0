"""Generalised advantage estimation as a reverse linear-recurrence scan, one program per row.

With r, v the rewards and values where mask, else 0, delta_t = r_t + gamma * v_{t+1} - v_t (v_T = 0) and
A_t = delta_t + c * A_{t+1} with c = gamma * lam (A_T = 0): each step is the affine map
x -> delta_t + c * x. Affine maps compose associatively, so a chunk of BLOCK_T steps is one
`tl.associative_scan(reverse=True)` over (decay, delta) pairs instead of BLOCK_T dependent steps.
Chunks run from the end of the row to its start; the A at a chunk's first position is the carry
folded into the last delta of the chunk to its left. Inputs are read once (the shifted read of
v_{t+1} hits cache) and advantages and returns written once: one launch.
"""
import torch
import triton
import triton.language as tl

from ._specs import FLOAT_DTYPES, powers_of_two, short, spec

_MAX_BLOCK_T = 2048


@triton.jit
def _compose(decay_later, delta_later, decay, delta):
    # The reverse scan hands the accumulated later steps first: x -> delta + decay * (delta_later + decay_later * x).
    return decay * decay_later, delta + decay * delta_later


@triton.jit
def _gae_kernel(rewards_ptr, values_ptr, mask_ptr, advantages_ptr, returns_ptr, T, gamma, decay,
                BLOCK_T: tl.constexpr):
    row_start = tl.program_id(0).to(tl.int64) * T
    lanes = tl.arange(0, BLOCK_T)
    carry = 0.0  # A at the first position right of the current chunk
    num_chunks = tl.cdiv(T, BLOCK_T)
    for i in range(num_chunks):
        t = (num_chunks - 1 - i) * BLOCK_T + lanes  # chunks from the end; aligned, so loads coalesce
        inside = t < T
        # Selected by the mask, not multiplied: a nan or inf at a masked-out position is never used.
        m = tl.load(mask_ptr + row_start + t, mask=inside, other=0) != 0
        m_next = tl.load(mask_ptr + row_start + t + 1, mask=t + 1 < T, other=0) != 0
        value = tl.where(m, tl.load(values_ptr + row_start + t, mask=inside, other=0.0).to(tl.float32), 0.0)
        value_next = tl.where(m_next, tl.load(values_ptr + row_start + t + 1, mask=t + 1 < T, other=0.0).to(tl.float32),
                              0.0)
        reward = tl.where(m, tl.load(rewards_ptr + row_start + t, mask=inside, other=0.0).to(tl.float32), 0.0)
        delta = reward + gamma * value_next - value
        delta += tl.where(lanes == BLOCK_T - 1, decay * carry, 0.0)
        _, advantage = tl.associative_scan((tl.full([BLOCK_T], decay, tl.float32), delta), 0, _compose,
                                           reverse=True)
        tl.store(advantages_ptr + row_start + t, advantage, mask=inside)
        tl.store(returns_ptr + row_start + t, advantage + value, mask=inside)
        carry = tl.sum(tl.where(lanes == 0, advantage, 0.0), axis=0)


def gae(rewards, values, mask, gamma, lam):
    """rewards, values [R, T] contiguous (one float dtype), mask bool [R, T] -> (advantages, returns) float32 [R, T]."""
    R, T = rewards.shape
    advantages = torch.empty((R, T), device=rewards.device, dtype=torch.float32)
    returns = torch.empty_like(advantages)
    block, warps = _launch_config(T)
    _gae_kernel[(R,)](rewards, values, mask, advantages, returns, T, gamma, gamma * lam, BLOCK_T=block,
                      num_warps=warps)
    return advantages, returns


def _launch_config(T):
    block = min(triton.next_power_of_2(T), _MAX_BLOCK_T)
    return block, (8 if block >= 1024 else 4)


def compile_specs():
    """Every specialization the launcher can pick (the contract in kernels/__init__.py)."""
    specs = []
    for dtype in FLOAT_DTYPES:
        for T in powers_of_two(_MAX_BLOCK_T):
            block, warps = _launch_config(T)
            specs.append(spec(f"gae {short(dtype)}", _gae_kernel, warps, dict(BLOCK_T=block), rewards_ptr=dtype,
                              values_ptr=dtype, mask_ptr=torch.bool, advantages_ptr=torch.float32,
                              returns_ptr=torch.float32, T="i32", gamma="fp32", decay="fp32"))
    return specs
