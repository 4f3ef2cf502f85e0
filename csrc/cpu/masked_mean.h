// masked_mean over a [outer, D, inner] tensor along D. See kernels/masked_mean.py for the contract.
// The mask M is read as it is: bool (as bytes) or float32 (cpu/numeric.h, is_kept); each function
// returns whether every mask value it read was 0 or 1 (a float mask of other values is an error).
#pragma once

#include "cpu/numeric.h"

namespace fastrlhf {

// count and sum of the kept x[i], i in [begin, end): float sums per block, added in double.
struct MaskedSum {
  double count = 0, sum = 0;
  bool binary = true;
};
template <typename T, typename M>
MaskedSum masked_sum(const T* x, const M* mask, int64_t begin, int64_t end);

// For outer indices [outer_begin, outer_end): mean[o, i] = sum_d x * mask / count and
// inv_count[o, i] = 1 / max(count, 1), with count = sum_d mask; mean is 0 where count is 0.
template <typename T, typename M>
bool masked_mean_lines(const T* x, const M* mask, int64_t reduced, int64_t inner, int64_t outer_begin,
                       int64_t outer_end, float* mean, float* inv_count);

// grad_x[o, d, i] = mask ? grad[o, i] * inv_count[o, i] : 0 over the lines (o, d) in [line_begin, line_end)
// of the outer * reduced lines of `inner` elements.
template <typename T, typename M>
bool masked_mean_backward(const float* grad, const float* inv_count, const M* mask, int64_t reduced, int64_t inner,
                          int64_t line_begin, int64_t line_end, T* grad_x);

}  // namespace fastrlhf
