#include "cpu/ppo_policy_loss.h"

#include <algorithm>

namespace fastrlhf {

template <typename T>
FASTRLHF_MULTIVERSION void ppo_policy_loss_rows(const T* logprobs, const T* old_logprobs, const T* advantages,
                                                const uint8_t* mask, int64_t tokens, PolicyClip clip, int64_t rows,
                                                int64_t row_begin, int64_t row_end, float* token_grad,
                                                float* partials) {
  const float low = 1.0f - clip.clip_eps, high = 1.0f + clip.clip_eps_high;
  for (int64_t r = row_begin; r < row_end; ++r) {
    const int64_t first = r * tokens;
    float count = 0.0f, loss_sum = 0.0f, clip_sum = 0.0f, kl_sum = 0.0f, ratio_sum = 0.0f;
#pragma omp simd reduction(+ : count, loss_sum, clip_sum, kl_sum, ratio_sum)
    for (int64_t i = first; i < first + tokens; ++i) {
      const float log_ratio = to_float(logprobs[i]) - to_float(old_logprobs[i]), a = to_float(advantages[i]);
      const float ratio = exp_fast(std::min(std::max(log_ratio, -20.0f), 20.0f));
      const float unclipped = -a * ratio, clipped = -a * std::min(std::max(ratio, low), high);
      const float cap = -clip.dual_clip * a;
      // & rather than &&: no branches, so the loop vectorises without AVX-512 masks too
      const bool capped = (a < 0.0f) & (std::max(unclipped, clipped) > cap);
      const bool flows = (unclipped >= clipped) & (std::fabs(log_ratio) <= 20.0f) & !capped;
      // masked(), not products with the mask: garbage at masked-out tokens must not leak in as nan
      const bool m = mask[i];
      token_grad[i] = masked(m & flows, unclipped);
      count += masked(m, 1.0f);
      loss_sum += masked(m, capped ? cap : std::max(unclipped, clipped));
      clip_sum += masked(m & (clipped > unclipped), 1.0f);
      kl_sum += masked(m, 0.5f * log_ratio * log_ratio);
      ratio_sum += masked(m, ratio);
    }
    partials[kCount * rows + r] = count;
    partials[kLoss * rows + r] = loss_sum;
    partials[(kFirstStat + 0) * rows + r] = clip_sum;
    partials[(kFirstStat + 1) * rows + r] = kl_sum;
    partials[(kFirstStat + 2) * rows + r] = ratio_sum;
  }
}

#define FASTRLHF_INSTANTIATE(T)                                                                              \
  template void ppo_policy_loss_rows<T>(const T*, const T*, const T*, const uint8_t*, int64_t, PolicyClip, int64_t, \
                                        int64_t, int64_t, float*, float*);
FASTRLHF_INSTANTIATE(float)
FASTRLHF_INSTANTIATE(bf16)
FASTRLHF_INSTANTIATE(fp16)
#undef FASTRLHF_INSTANTIATE

}  // namespace fastrlhf
