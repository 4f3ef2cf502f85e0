// kl_penalty over elements [begin, end) of flat inputs of one storage type T. See kernels/kl_penalty.py
// for the math.
#pragma once

#include "cpu/numeric.h"

namespace fastrlhf {

// The codes of KL_ESTIMATORS in fastrlhf/codes.py (a name's index).
enum KlEstimator : int { kK1 = 0, kK2 = 1, kK3 = 2, kAbs = 3 };

// kl[i] = estimator(logprobs[i] - ref_logprobs[i]), clamped to [-clamp, clamp] (clamp = inf: none).
template <typename T>
void kl_penalty_forward(const T* logprobs, const T* ref_logprobs, int estimator, float clamp, int64_t begin,
                        int64_t end, float* kl);

// grad_logprobs = grad_kl * dkl/dx and grad_ref_logprobs = -grad_kl * dkl/dx; either output may be null (skipped).
template <typename T>
void kl_penalty_backward(const T* logprobs, const T* ref_logprobs, const float* grad_kl, int estimator, float clamp,
                         int64_t begin, int64_t end, T* grad_logprobs, T* grad_ref_logprobs);

}  // namespace fastrlhf
