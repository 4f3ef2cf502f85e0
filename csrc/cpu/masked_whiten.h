// masked_whiten: normalise by the moments of the masked elements (masked_moments, cpu/masked_reduction.h).
// See kernels/masked_whiten.py for the contract.
#pragma once

#include "cpu/masked_reduction.h"

namespace fastrlhf {

struct Whitening {
  float mean, rstd, shift;  // y = (x - mean) * rstd + shift where masked
};

// From the moments of all masked elements: var = M2 / max(n - unbiased, 1), rstd = 1 / sqrt(var + eps);
// shift is the mean when !shift_mean (the mean is added back), else 0.
Whitening whitening(const Moments& moments, bool shift_mean, bool unbiased, double eps);

// y[i] = mask[i] ? (x[i] - mean) * rstd + shift : 0 for i in [begin, end).
template <typename T>
void masked_whiten_apply(const T* x, const uint8_t* mask, Whitening w, int64_t begin, int64_t end, float* y);

}  // namespace fastrlhf
