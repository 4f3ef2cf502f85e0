#include "cpu/ppo_value_loss.h"

namespace fastrlhf {

template <typename T>
FASTRLHF_MULTIVERSION void ppo_value_loss_rows(const T* values, const T* old_values, const T* returns,
                                               const uint8_t* mask, int64_t tokens, float clip_eps, int64_t rows,
                                               int64_t row_begin, int64_t row_end, float* token_grad,
                                               float* partials) {
  for (int64_t r = row_begin; r < row_end; ++r) {
    const int64_t first = r * tokens;
    float count = 0.0f, loss_sum = 0.0f, clip_sum = 0.0f;
#pragma omp simd reduction(+ : count, loss_sum, clip_sum)
    for (int64_t i = first; i < first + tokens; ++i) {
      const float v = to_float(values[i]), old = to_float(old_values[i]), ret = to_float(returns[i]);
      const float delta = v - old;
      // inside the clip range v itself, not old + (v - old), which rounds: the branches then tie exactly
      const float clipped_v = std::fabs(delta) > clip_eps ? old + clamp_of(delta, -clip_eps, clip_eps) : v;
      const float unclipped = (v - ret) * (v - ret), clipped = (clipped_v - ret) * (clipped_v - ret);
      const bool m = mask[i];
      token_grad[i] = masked(m, unclipped >= clipped ? v - ret : 0.0f);  // the byte mask only in masked()
      count += masked(m, 1.0f);
      loss_sum += masked(m, 0.5f * max_of(unclipped, clipped));
      clip_sum += masked(m, clipped > unclipped ? 1.0f : 0.0f);
    }
    partials[kCount * rows + r] = count;
    partials[kLoss * rows + r] = loss_sum;
    partials[kFirstStat * rows + r] = clip_sum;
  }
}

#define FASTRLHF_INSTANTIATE(T)                                                                           \
  template void ppo_value_loss_rows<T>(const T*, const T*, const T*, const uint8_t*, int64_t, float, int64_t, \
                                       int64_t, int64_t, float*, float*);
FASTRLHF_INSTANTIATE(float)
FASTRLHF_INSTANTIATE(bf16)
FASTRLHF_INSTANTIATE(fp16)
#undef FASTRLHF_INSTANTIATE

}  // namespace fastrlhf
