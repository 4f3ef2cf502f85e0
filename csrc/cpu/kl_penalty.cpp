#include "cpu/kl_penalty.h"

#include <algorithm>
#include <type_traits>

namespace fastrlhf {

namespace {

// Clamps to [-c, c] keeping nan (c = inf: the identity). By value: std::min/max return references,
// which stop omp simd loops from vectorising.
inline float clamp_symmetric(float v, float c) { return v < -c ? -c : (v > c ? c : v); }

// The estimator at x = logprobs - ref_logprobs, before the output clamp (clamp = inf: none).
template <int kEstimator>
inline float estimate(float x, float clamp) {
  switch (kEstimator) {
    case kK1: return x;
    case kK2: return 0.5f * x * x;
    case kK3: {
      const float y = x < -clamp ? -clamp : x;  // exp(-y) <= exp(clamp) cannot overflow
      return exp_fast(-y) - 1.0f + y;
    }
    default: return std::fabs(x);
  }
}

// g * d estimate / dx, the factors applied in the order of torch's autograd so that a nan spreads (or
// not) as in the reference. clamped: clamp < inf; without a clamp the reference masks nothing.
template <int kEstimator>
inline float estimate_grad(float g, float x, float clamp, bool clamped) {
  switch (kEstimator) {
    case kK1: return g;
    case kK2: return g * x;
    case kK3: return !clamped || x >= -clamp ? g * (1.0f - exp_fast(-x)) : 0.0f;  // 0 where x was clamped
    default: return g * (float(x > 0.0f) - float(x < 0.0f));  // 0 at 0, as torch's abs
  }
}

template <int kEstimator, typename T>
FASTRLHF_MULTIVERSION void forward_loop(const T* logprobs, const T* ref_logprobs, float clamp, int64_t begin,
                                        int64_t end, float* kl) {
#pragma omp simd
  for (int64_t i = begin; i < end; ++i) {
    kl[i] = clamp_symmetric(estimate<kEstimator>(to_float(logprobs[i]) - to_float(ref_logprobs[i]), clamp), clamp);
  }
}

constexpr int64_t kBlock = 512;  // gradients staged in a float buffer in L1, then stored to the outputs wanted

template <int kEstimator, typename T>
FASTRLHF_MULTIVERSION void backward_loop(const T* logprobs, const T* ref_logprobs, const float* grad_kl, float clamp,
                                         int64_t begin, int64_t end, T* grad_logprobs, T* grad_ref_logprobs) {
  const bool clamped = clamp < kInf;
  float grad[kBlock];
  for (int64_t block = begin; block < end; block += kBlock) {
    const int64_t n = std::min(kBlock, end - block);
    const T* lp = logprobs + block;
    const T* ref = ref_logprobs + block;
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) {
      const float x = to_float(lp[i]) - to_float(ref[i]), value = estimate<kEstimator>(x, clamp);
      // Like torch.clamp, the gradient passes where -clamp <= kl <= clamp, bounds included.
      const float g = !clamped || (value >= -clamp && value <= clamp) ? grad_kl[block + i] : 0.0f;
      grad[i] = estimate_grad<kEstimator>(g, x, clamp, clamped);
    }
    if (grad_logprobs) {
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) grad_logprobs[block + i] = from_float<T>(grad[i]);
    }
    if (grad_ref_logprobs) {
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) grad_ref_logprobs[block + i] = from_float<T>(-grad[i]);
    }
  }
}

// Calls loop(std::integral_constant<int, code>) so each estimator gets its own vectorised loop.
template <typename F>
void dispatch_estimator(int estimator, const F& loop) {
  switch (estimator) {
    case kK1: return loop(std::integral_constant<int, kK1>{});
    case kK2: return loop(std::integral_constant<int, kK2>{});
    case kK3: return loop(std::integral_constant<int, kK3>{});
    default: return loop(std::integral_constant<int, kAbs>{});
  }
}

}  // namespace

template <typename T>
void kl_penalty_forward(const T* logprobs, const T* ref_logprobs, int estimator, float clamp, int64_t begin,
                        int64_t end, float* kl) {
  dispatch_estimator(estimator, [&](auto code) {
    forward_loop<decltype(code)::value>(logprobs, ref_logprobs, clamp, begin, end, kl);
  });
}

template <typename T>
void kl_penalty_backward(const T* logprobs, const T* ref_logprobs, const float* grad_kl, int estimator, float clamp,
                         int64_t begin, int64_t end, T* grad_logprobs, T* grad_ref_logprobs) {
  dispatch_estimator(estimator, [&](auto code) {
    backward_loop<decltype(code)::value>(logprobs, ref_logprobs, grad_kl, clamp, begin, end, grad_logprobs,
                                         grad_ref_logprobs);
  });
}

#define FASTRLHF_INSTANTIATE(T)                                                                   \
  template void kl_penalty_forward<T>(const T*, const T*, int, float, int64_t, int64_t, float*); \
  template void kl_penalty_backward<T>(const T*, const T*, const float*, int, float, int64_t, int64_t, T*, T*);
FASTRLHF_INSTANTIATE(float)
FASTRLHF_INSTANTIATE(bf16)
FASTRLHF_INSTANTIATE(fp16)
#undef FASTRLHF_INSTANTIATE

}  // namespace fastrlhf
