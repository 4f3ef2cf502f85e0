#include "cpu/kl_shaped_rewards.h"

namespace fastrlhf {

template <typename T>
FASTRLHF_MULTIVERSION void kl_shaped_rewards(const float* scores, const T* kl, const bool* mask, int64_t length,
                                             float kl_coef, float score_clip, int64_t row_begin, int64_t row_end,
                                             float* rewards) {
  for (int64_t row = row_begin; row < row_end; ++row) {
    const T* row_kl = kl + row * length;
    const bool* row_mask = mask + row * length;
    const uint8_t* mask_bytes = reinterpret_cast<const uint8_t*>(row_mask);  // bytes, as the other kernels read masks
    float* out = rewards + row * length;
#pragma omp simd
    for (int64_t t = 0; t < length; ++t) out[t] = masked(mask_bytes[t], -kl_coef * to_float(row_kl[t]));
    int64_t last = length - 1;
    while (last >= 0 && !row_mask[last]) --last;
    if (last >= 0) {
      const float score = scores[row];
      out[last] += score < -score_clip ? -score_clip : (score > score_clip ? score_clip : score);
    }
  }
}

#define FASTRLHF_INSTANTIATE(T)                                                                                 \
  template void kl_shaped_rewards<T>(const float*, const T*, const bool*, int64_t, float, float, int64_t, int64_t, \
                                     float*);
FASTRLHF_INSTANTIATE(float)
FASTRLHF_INSTANTIATE(bf16)
FASTRLHF_INSTANTIATE(fp16)
#undef FASTRLHF_INSTANTIATE

}  // namespace fastrlhf
