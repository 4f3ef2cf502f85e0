// PPO clipped policy loss: the rows kernel. See kernels/ppo_policy_loss.py for the math; the finalize
// and the backward are shared with the value loss (cpu/masked_reduction.h).
#pragma once

#include "cpu/masked_reduction.h"

namespace fastrlhf {

struct PolicyClip {
  float clip_eps, clip_eps_high, dual_clip;  // dual_clip = inf: no dual clip
};

constexpr int64_t kPolicyStats = 3;  // len(POLICY_STATS) of fastrlhf/codes.py: clip_frac, approx_kl, ratio_mean

// For rows [row_begin, row_end) of [rows, tokens] inputs: token_grad = d token loss / d logprobs
// (0 where masked out) and the row sums partials[k * rows + r] (LossPartial order, then the stats).
template <typename T>
void ppo_policy_loss_rows(const T* logprobs, const T* old_logprobs, const T* advantages, const uint8_t* mask,
                          int64_t tokens, PolicyClip clip, int64_t rows, int64_t row_begin, int64_t row_end,
                          float* token_grad, float* partials);

}  // namespace fastrlhf
