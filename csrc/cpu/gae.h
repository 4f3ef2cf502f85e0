// Generalised advantage estimation over rows [row_begin, row_end) of [R, T] inputs. See kernels/gae.py.
#pragma once

#include "cpu/numeric.h"

namespace fastrlhf {

// With r, v the rewards and values where mask, else 0 (masked-out positions are never read), for
// t = T-1 .. 0:
//   A_t = r_t + gamma * v_{t+1} - v_t + gamma * lam * A_{t+1}   (v_T = A_T = 0),
// advantages = A and returns = A + v, float32 [R, T]. Inputs are contiguous rows of length T.
// Returns whether every advantage is finite: false when a masked reward or value is nan or inf
// (the nan or inf reaches A at its own position) or the recurrence overflows.
template <typename T>
bool gae(const T* rewards, const T* values, const bool* mask, int64_t length, float gamma, float lam,
         int64_t row_begin, int64_t row_end, float* advantages, float* returns);

}  // namespace fastrlhf
