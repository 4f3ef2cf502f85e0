#include "cpu/masked_mean.h"
#include "cpu/masked_reduction.h"

#include <algorithm>

namespace fastrlhf {

template <typename T>
FASTRLHF_MULTIVERSION void masked_mean_lines(const T* x, const uint8_t* mask, int64_t reduced, int64_t inner,
                                             int64_t outer_begin, int64_t outer_end, float* mean, float* inv_count) {
  for (int64_t o = outer_begin; o < outer_end; ++o) {
    const T* xo = x + o * reduced * inner;
    const uint8_t* mo = mask + o * reduced * inner;
    float* sum = mean + o * inner;
    float* count = inv_count + o * inner;
    if (inner == 1) {  // reducing contiguous elements: vectorise along D
      float row_sum = 0.0f, row_count = 0.0f;
#pragma omp simd reduction(+ : row_sum, row_count)
      for (int64_t d = 0; d < reduced; ++d) {
        row_sum += masked(mo[d], to_float(xo[d]));
        row_count += masked(mo[d], 1.0f);
      }
      *sum = row_sum, *count = row_count;
    } else {  // vectorise along inner, accumulating in the outputs
      std::fill(sum, sum + inner, 0.0f);
      std::fill(count, count + inner, 0.0f);
      for (int64_t d = 0; d < reduced; ++d) {
        const T* xd = xo + d * inner;
        const uint8_t* md = mo + d * inner;
#pragma omp simd
        for (int64_t i = 0; i < inner; ++i) {
          sum[i] += masked(md[i], to_float(xd[i]));
          count[i] += masked(md[i], 1.0f);
        }
      }
    }
    for (int64_t i = 0; i < inner; ++i) {
      count[i] = 1.0f / std::max(count[i], 1.0f);
      sum[i] *= count[i];
    }
  }
}

template <typename T>
FASTRLHF_MULTIVERSION void masked_mean_backward(const float* grad, const float* inv_count, const uint8_t* mask,
                                                int64_t reduced, int64_t inner, int64_t line_begin,
                                                int64_t line_end, T* grad_x) {
  for (int64_t line = line_begin; line < line_end;) {
    const int64_t o = line / reduced, stop = std::min(line_end, (o + 1) * reduced);  // the lines of o
    const float* g = grad + o * inner;
    const float* inv = inv_count + o * inner;
    if (inner == 1) {  // one element per line: vectorise across lines
      const float scale = g[0] * inv[0];
#pragma omp simd
      for (int64_t l = line; l < stop; ++l) grad_x[l] = from_float<T>(masked(mask[l], scale));
    } else {
      for (int64_t l = line; l < stop; ++l) {
        const uint8_t* m = mask + l * inner;
        T* out = grad_x + l * inner;
#pragma omp simd
        for (int64_t i = 0; i < inner; ++i) {
          out[i] = from_float<T>(masked(m[i], g[i] * inv[i]));
        }
      }
    }
    line = stop;
  }
}

#define FASTRLHF_INSTANTIATE(T)                                                                                \
  template void masked_mean_lines<T>(const T*, const uint8_t*, int64_t, int64_t, int64_t, int64_t, float*, float*); \
  template void masked_mean_backward<T>(const float*, const float*, const uint8_t*, int64_t, int64_t, int64_t,      \
                                        int64_t, T*);
FASTRLHF_INSTANTIATE(float)
FASTRLHF_INSTANTIATE(bf16)
FASTRLHF_INSTANTIATE(fp16)
#undef FASTRLHF_INSTANTIATE

}  // namespace fastrlhf
