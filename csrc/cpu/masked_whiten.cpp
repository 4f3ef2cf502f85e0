#include "cpu/masked_whiten.h"

#include <algorithm>

namespace fastrlhf {

Whitening whitening(const Moments& moments, bool shift_mean, bool unbiased, double eps) {
  const double divisor = std::max(unbiased ? moments.count - 1 : moments.count, 1.0);  // Bessel, clamped
  const float mean = float(moments.mean);
  return {mean, float(1.0 / std::sqrt(moments.m2 / divisor + eps)), shift_mean ? 0.0f : mean};
}

template <typename T>
FASTRLHF_MULTIVERSION void masked_whiten_apply(const T* x, const uint8_t* mask, Whitening w, int64_t begin,
                                               int64_t end, float* y) {
#pragma omp simd
  for (int64_t i = begin; i < end; ++i) {
    y[i] = masked(mask[i], (to_float(x[i]) - w.mean) * w.rstd + w.shift);
  }
}

template void masked_whiten_apply<float>(const float*, const uint8_t*, Whitening, int64_t, int64_t, float*);
template void masked_whiten_apply<bf16>(const bf16*, const uint8_t*, Whitening, int64_t, int64_t, float*);
template void masked_whiten_apply<fp16>(const fp16*, const uint8_t*, Whitening, int64_t, int64_t, float*);

}  // namespace fastrlhf
