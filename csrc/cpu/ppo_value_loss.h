// PPO clipped value loss: the rows kernel. See kernels/ppo_value_loss.py for the math; the finalize
// and the backward are shared with the policy loss (cpu/masked_reduction.h).
#pragma once

#include "cpu/masked_reduction.h"

namespace fastrlhf {

constexpr int64_t kValueStats = 1;  // len(VALUE_STATS) of fastrlhf/codes.py: clip_frac

// For rows [row_begin, row_end) of [rows, tokens] inputs: token_grad = d token loss / d values
// (0 where masked out) and the row sums partials[k * rows + r] (LossPartial order, then clip_frac).
// clip_eps = inf gives the unclipped loss.
template <typename T>
void ppo_value_loss_rows(const T* values, const T* old_values, const T* returns, const uint8_t* mask, int64_t tokens,
                         float clip_eps, int64_t rows, int64_t row_begin, int64_t row_end, float* token_grad,
                         float* partials);

}  // namespace fastrlhf
