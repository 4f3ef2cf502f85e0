// kl_shaped_rewards over rows [row_begin, row_end) of [R, T] inputs. See kernels/kl_shaped_rewards.py.
#pragma once

#include "cpu/numeric.h"

namespace fastrlhf {

// rewards[r, t] = -kl_coef * kl[r, t] where mask[r, t], else 0 (kl there is never read), plus scores[r]
// clamped to [-score_clip, score_clip] (inf: no clip) at the row's last masked position; rows without
// one get no score.
template <typename T>
void kl_shaped_rewards(const float* scores, const T* kl, const bool* mask, int64_t length, float kl_coef,
                       float score_clip, int64_t row_begin, int64_t row_end, float* rewards);

}  // namespace fastrlhf
