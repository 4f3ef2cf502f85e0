"""Per-token PPO rewards: -kl_coef * kl where mask (else 0) plus the sequence score at each row's last masked token.

One program per row walks its chunks from the end, so the first masked position it meets is the
row's last (the EOS token) and the score can be placed in the same single pass: kl and mask are
read once and the rewards written once. One launch.
"""
import itertools

import torch
import triton
import triton.language as tl

from ._specs import FLOAT_DTYPES, powers_of_two, short, spec

_MAX_BLOCK_T = 2048


@triton.jit
def _kl_shaped_rewards_kernel(scores_ptr, kl_ptr, mask_ptr, rewards_ptr, T, kl_coef, score_clip,
                              BLOCK_T: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    row_start = row * T
    score = tl.load(scores_ptr + row).to(tl.float32)
    score = tl.where(score < -score_clip, -score_clip, tl.where(score > score_clip, score_clip, score))  # nan stays
    lanes = tl.arange(0, BLOCK_T)
    last = -1  # the row's last masked position, once a chunk has shown it
    num_chunks = tl.cdiv(T, BLOCK_T)
    for i in range(num_chunks):
        t = (num_chunks - 1 - i) * BLOCK_T + lanes
        inside = t < T
        m = tl.load(mask_ptr + row_start + t, mask=inside, other=0) != 0
        kl = tl.load(kl_ptr + row_start + t, mask=inside, other=0.0).to(tl.float32)
        last = tl.maximum(last, tl.max(tl.where(m, t, -1), axis=0))  # chunks to the right win
        # selected, not multiplied by the mask: a nan or inf at a masked-out position is never used
        rewards = tl.where(m, -kl_coef * kl, 0.0) + tl.where(t == last, score, 0.0)
        tl.store(rewards_ptr + row_start + t, rewards, mask=inside)


def kl_shaped_rewards(scores, kl, mask, kl_coef, score_clip):
    """scores [R], kl [R, T] contiguous, mask bool [R, T], score_clip (inf: none) -> rewards float32 [R, T]."""
    R, T = kl.shape
    rewards = torch.empty((R, T), device=kl.device, dtype=torch.float32)
    block, warps = _launch_config(T)
    _kl_shaped_rewards_kernel[(R,)](scores, kl, mask, rewards, T, kl_coef, score_clip, BLOCK_T=block,
                                    num_warps=warps)
    return rewards


def _launch_config(T):
    block = min(triton.next_power_of_2(T), _MAX_BLOCK_T)
    return block, (8 if block >= 1024 else 4)


def compile_specs():
    """Every specialization the launcher can pick (the contract in kernels/__init__.py)."""
    specs = []
    for scores_dtype, kl_dtype, T in itertools.product(FLOAT_DTYPES, FLOAT_DTYPES, powers_of_two(_MAX_BLOCK_T)):
        block, warps = _launch_config(T)
        specs.append(spec(f"kl_shaped_rewards scores={short(scores_dtype)} kl={short(kl_dtype)}",
                          _kl_shaped_rewards_kernel, warps, dict(BLOCK_T=block), scores_ptr=scores_dtype,
                          kl_ptr=kl_dtype, mask_ptr=torch.bool, rewards_ptr=torch.float32, T="i32",
                          kl_coef="fp32", score_clip="fp32"))
    return specs
