"""PPO clipped value loss: the per-token math. The rows kernel, finalize and backward that run it are
shared with the policy loss (kernels/_masked_reduction.py). Forward: 1 launch up to
SINGLE_PROGRAM_MAX tokens, else 2. Backward: 1 (ppo_loss_backward).

Per token, with returns R: loss = 0.5 * max((v - R)^2, (v_clipped - R)^2) where
v_clipped = old + clamp(v - old, -clip_eps, clip_eps) outside the clip range, and v itself inside it
(not old + (v - old), which rounds), so the branches tie exactly there and clip_frac counts only
truly clipped tokens; clip_eps = inf is then exactly the unclipped loss (as reference.ppo_value_loss).
d loss / d v = v - R where the unclipped branch wins, else 0 (the clipped branch is flat in v).
"""
import triton
import triton.language as tl

from fastrlhf.codes import VALUE_STATS

from ._masked_reduction import loss_forward, loss_forward_specs


@triton.jit
def _value_token(values, old_values, returns, delta_low, delta_high, unused_dual_clip):
    delta = values - old_values
    clipped_values = tl.where((delta < delta_low) | (delta > delta_high),
                              old_values + tl.minimum(tl.maximum(delta, delta_low), delta_high), values)
    unclipped = (values - returns) * (values - returns)
    clipped = (clipped_values - returns) * (clipped_values - returns)
    grad = tl.where(unclipped >= clipped, values - returns, 0.0)
    # one statistic: the rows kernel sums the two unused slots as zeros
    return 0.5 * tl.maximum(unclipped, clipped), grad, (clipped > unclipped).to(tl.float32), 0.0, 0.0


def ppo_value_loss_forward(values, old_values, returns, mask, clip_eps, reduction):
    """[R, T] inputs of one float dtype, bool mask; clip_eps = inf for the unclipped loss; reduction a code
    of REDUCTIONS. -> (loss, stats [clip_frac], token_grad [R, T], row_scale [R]), float32."""
    return loss_forward(_value_token, len(VALUE_STATS), values, old_values, returns, mask, -clip_eps, clip_eps,
                        float("inf"), reduction)


def compile_specs():
    """Every specialization the launcher can pick (the contract in kernels/__init__.py)."""
    return loss_forward_specs("ppo_value_loss_forward", _value_token, len(VALUE_STATS))
