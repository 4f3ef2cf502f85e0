"""PPO clipped policy-gradient loss: the per-token math. The rows kernel, finalize and backward that
run it are shared with the value loss (kernels/_masked_reduction.py). Forward: 1 launch up to
SINGLE_PROGRAM_MAX tokens, else 2. Backward: 1 (ppo_loss_backward).

Per token, with ratio = exp(clamp(logprobs - old_logprobs, -20, 20)) and advantage A:
  loss = max(-A * ratio, -A * clip(ratio, 1 - clip_eps, 1 + clip_eps_high)), then min(loss, -dual_clip * A)
  where A < 0. d loss / d logprobs = -A * ratio where the unclipped branch wins (in the clip range the
  two branches are equal), else 0; also 0 where the log-ratio clamp or the dual clip is active.
"""
import triton
import triton.language as tl

from fastrlhf.codes import POLICY_STATS

from ._masked_reduction import loss_forward, loss_forward_specs


@triton.jit
def _policy_token(logprobs, old_logprobs, advantages, ratio_low, ratio_high, dual_clip):
    log_ratio = logprobs - old_logprobs
    ratio = tl.exp(tl.minimum(tl.maximum(log_ratio, -20.0), 20.0))
    unclipped = -advantages * ratio
    clipped = -advantages * tl.minimum(tl.maximum(ratio, ratio_low), ratio_high)
    loss = tl.maximum(unclipped, clipped)
    grad = tl.where((unclipped >= clipped) & (tl.abs(log_ratio) <= 20.0), unclipped, 0.0)
    # dual_clip = inf when off: the cap -inf * A is never below the loss (and A = 0 never caps)
    cap = -dual_clip * advantages
    capped = (advantages < 0) & (loss > cap)
    loss = tl.where(capped, cap, loss)
    grad = tl.where(capped, 0.0, grad)
    return loss, grad, (clipped > unclipped).to(tl.float32), 0.5 * log_ratio * log_ratio, ratio


def ppo_policy_loss_forward(logprobs, old_logprobs, advantages, mask, clip_eps, clip_eps_high, dual_clip, reduction):
    """[R, T] inputs of one float dtype, bool mask; dual_clip = inf for none; reduction a code of REDUCTIONS.
    -> (loss, stats [clip_frac, approx_kl, ratio_mean], token_grad [R, T], row_scale [R]), float32."""
    return loss_forward(_policy_token, len(POLICY_STATS), logprobs, old_logprobs, advantages, mask, 1.0 - clip_eps,
                        1.0 + clip_eps_high, dual_clip, reduction)


def compile_specs():
    """Every specialization the launcher can pick (the contract in kernels/__init__.py)."""
    return loss_forward_specs("ppo_policy_loss_forward", _policy_token, len(POLICY_STATS))
