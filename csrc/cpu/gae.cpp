#include "cpu/gae.h"

namespace fastrlhf {

// One reverse pass per row: the recurrence is serial in t, so rows are the parallelism (the bindings
// split them across threads). Everything but the multiply-add on A overlaps across iterations.
template <typename T>
FASTRLHF_MULTIVERSION bool gae(const T* rewards, const T* values, const bool* mask, int64_t length, float gamma,
                               float lam, int64_t row_begin, int64_t row_end, float* advantages, float* returns) {
  const float decay = gamma * lam;
  bool finite = true;
  for (int64_t row = row_begin; row < row_end; ++row) {
    const int64_t start = row * length;
    float advantage = 0.0f, next_value = 0.0f;
    for (int64_t t = start + length - 1; t >= start; --t) {
      const float value = masked(mask[t], to_float(values[t])), reward = masked(mask[t], to_float(rewards[t]));
      advantage = reward + gamma * next_value - value + decay * advantage;
      advantages[t] = advantage;
      returns[t] = advantage + value;
      next_value = value;
      finite &= std::isfinite(advantage);
    }
  }
  return finite;
}

#define FASTRLHF_INSTANTIATE(T) \
  template bool gae<T>(const T*, const T*, const bool*, int64_t, float, float, int64_t, int64_t, float*, float*);
FASTRLHF_INSTANTIATE(float)
FASTRLHF_INSTANTIATE(bf16)
FASTRLHF_INSTANTIATE(fp16)
#undef FASTRLHF_INSTANTIATE

}  // namespace fastrlhf
