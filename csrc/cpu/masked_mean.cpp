#include "cpu/masked_mean.h"

#include <algorithm>

namespace fastrlhf {

namespace {
constexpr int64_t kSumBlock = 1024;  // float partial sums per block keep the rounding error small
}  // namespace

template <typename T, typename M>
FASTRLHF_MULTIVERSION MaskedSum masked_sum(const T* x, const M* mask, int64_t begin, int64_t end) {
  MaskedSum total;
  float other = 0.0f;  // a count, like the sums: GCC vectorises no bool reductions
  for (int64_t block = begin; block < end; block += kSumBlock) {
    const int64_t block_end = std::min(end, block + kSumBlock);
    float count = 0.0f, sum = 0.0f;
#pragma omp simd reduction(+ : count, sum, other)
    for (int64_t i = block; i < block_end; ++i) {
      count += masked(is_kept(mask[i]), 1.0f);
      sum += masked(is_kept(mask[i]), to_float(x[i]));
      other += masked(not_binary(mask[i]), 1.0f);
    }
    total.count += count;
    total.sum += sum;
  }
  total.binary = other == 0.0f;
  return total;
}

template <typename T, typename M>
FASTRLHF_MULTIVERSION bool masked_mean_lines(const T* x, const M* mask, int64_t reduced, int64_t inner,
                                             int64_t outer_begin, int64_t outer_end, float* mean, float* inv_count) {
  bool binary = true;
  for (int64_t o = outer_begin; o < outer_end; ++o) {
    const T* xo = x + o * reduced * inner;
    const M* mo = mask + o * reduced * inner;
    float* sum = mean + o * inner;
    float* count = inv_count + o * inner;
    if (inner == 1) {  // reducing contiguous elements: vectorise along D
      const MaskedSum line = masked_sum(xo, mo, 0, reduced);
      *sum = float(line.sum / std::max(line.count, 1.0)), *count = float(1.0 / std::max(line.count, 1.0));
      binary &= line.binary;
      continue;
    }
    // vectorise along inner, accumulating in the outputs
    std::fill(sum, sum + inner, 0.0f);
    std::fill(count, count + inner, 0.0f);
    float other = 0.0f;
    for (int64_t d = 0; d < reduced; ++d) {
      const T* xd = xo + d * inner;
      const M* md = mo + d * inner;
#pragma omp simd reduction(+ : other)
      for (int64_t i = 0; i < inner; ++i) {
        sum[i] += masked(is_kept(md[i]), to_float(xd[i]));
        count[i] += masked(is_kept(md[i]), 1.0f);
        other += masked(not_binary(md[i]), 1.0f);
      }
    }
    binary &= other == 0.0f;
    for (int64_t i = 0; i < inner; ++i) {
      count[i] = 1.0f / std::max(count[i], 1.0f);
      sum[i] *= count[i];
    }
  }
  return binary;
}

template <typename T, typename M>
FASTRLHF_MULTIVERSION bool masked_mean_backward(const float* grad, const float* inv_count, const M* mask,
                                                int64_t reduced, int64_t inner, int64_t line_begin, int64_t line_end,
                                                T* grad_x) {
  float other = 0.0f;
  for (int64_t line = line_begin; line < line_end;) {
    const int64_t o = line / reduced, stop = std::min(line_end, (o + 1) * reduced);  // the lines of o
    const float* g = grad + o * inner;
    const float* inv = inv_count + o * inner;
    if (inner == 1) {  // one element per line: vectorise across lines
      const float scale = g[0] * inv[0];
#pragma omp simd reduction(+ : other)
      for (int64_t l = line; l < stop; ++l) {
        grad_x[l] = from_float<T>(masked(is_kept(mask[l]), scale));
        other += masked(not_binary(mask[l]), 1.0f);
      }
    } else {
      for (int64_t l = line; l < stop; ++l) {
        const M* m = mask + l * inner;
        T* out = grad_x + l * inner;
#pragma omp simd reduction(+ : other)
        for (int64_t i = 0; i < inner; ++i) {
          out[i] = from_float<T>(masked(is_kept(m[i]), g[i] * inv[i]));
          other += masked(not_binary(m[i]), 1.0f);
        }
      }
    }
    line = stop;
  }
  return other == 0.0f;
}

#define FASTRLHF_INSTANTIATE(T, M)                                                                             \
  template MaskedSum masked_sum<T, M>(const T*, const M*, int64_t, int64_t);                                   \
  template bool masked_mean_lines<T, M>(const T*, const M*, int64_t, int64_t, int64_t, int64_t, float*, float*); \
  template bool masked_mean_backward<T, M>(const float*, const float*, const M*, int64_t, int64_t, int64_t,      \
                                           int64_t, T*);
FASTRLHF_INSTANTIATE(float, uint8_t)
FASTRLHF_INSTANTIATE(bf16, uint8_t)
FASTRLHF_INSTANTIATE(fp16, uint8_t)
FASTRLHF_INSTANTIATE(float, float)
FASTRLHF_INSTANTIATE(bf16, float)
FASTRLHF_INSTANTIATE(fp16, float)
#undef FASTRLHF_INSTANTIATE

}  // namespace fastrlhf
