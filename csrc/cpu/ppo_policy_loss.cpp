#include "cpu/ppo_policy_loss.h"

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
      const float ratio = exp_fast(clamp_of(log_ratio, -20.0f, 20.0f));
      const float unclipped = -a * ratio, clipped = -a * clamp_of(ratio, low, high);
      const float cap = -clip.dual_clip * a, uncapped = max_of(unclipped, clipped);
      const bool capped = (a < 0.0f) & (uncapped > cap);
      // d loss / d logprobs: through the unclipped branch (the clipped one is flat), unless the log-ratio
      // clamp or the dual clip is active. &, not &&, and the byte mask only inside masked(): no branches
      const float grad = (unclipped >= clipped) & (std::fabs(log_ratio) <= 20.0f) & !capped ? unclipped : 0.0f;
      // masked(), not products with the mask: garbage at masked-out tokens must not leak in as nan
      const bool m = mask[i];
      token_grad[i] = masked(m, grad);
      count += masked(m, 1.0f);
      loss_sum += masked(m, capped ? cap : uncapped);
      clip_sum += masked(m, clipped > unclipped ? 1.0f : 0.0f);
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
