#include "cpu/token_logprobs.h"

#include <algorithm>

namespace fastrlhf {

namespace {

constexpr int64_t kSumBlock = 1024;  // partial sums per block keep fp32 rounding error small

// sum_e = sum_j exp(d_j) and, when kEntropy, sum_ed = sum_j exp(d_j) * d_j, with d_j = z_j / T - m.
template <bool kEntropy, typename T>
FASTRLHF_MULTIVERSION void shifted_exp_sums(const T* z, int64_t vocab, float inv_temperature, float m, float& sum_e, float& sum_ed) {
  sum_e = sum_ed = 0.0f;
  for (int64_t begin = 0; begin < vocab; begin += kSumBlock) {
    const int64_t end = std::min(vocab, begin + kSumBlock);
    float block_e = 0.0f, block_ed = 0.0f;
#pragma omp simd reduction(+ : block_e, block_ed)
    for (int64_t j = begin; j < end; ++j) {
      float d = to_float(z[j]) * inv_temperature - m;
      float e = exp_fast(d);
      block_e += e;
      if (kEntropy) block_ed += e > 0.0f ? e * d : 0.0f;  // a logit of -inf adds 0, not nan
    }
    sum_e += block_e;
    sum_ed += block_ed;
  }
}

// d/dz_j of (g_logprob * logprob + g_entropy * entropy) at log p_j = logp, without the
// [j == label] term of the logprob.
inline float softmax_grad(float logp, float g_logprob, float g_entropy, float entropy) {
  float p = exp_fast(logp);
  float entropy_term = p * (logp + entropy);
  return -g_logprob * p - g_entropy * (p > 0.0f ? entropy_term : 0.0f);  // p = 0: logp may be -inf
}

}  // namespace

// Each row is read twice (max, then the sums); the second read hits cache for any vocabulary
// that fits in L2, so memory traffic is one read of the logits.
template <typename T>
FASTRLHF_MULTIVERSION void token_logprobs_forward(Rows<T> logits, int64_t vocab, const int64_t* labels, float temperature,
                            int64_t ignore_index, int64_t row_begin, int64_t row_end, float* logprobs,
                            float* entropy, float* lse) {
  const float inv_temperature = 1.0f / temperature;
  for (int64_t r = row_begin; r < row_end; ++r) {
    if (labels[r] == ignore_index) {
      logprobs[r] = lse[r] = 0.0f;
      if (entropy) entropy[r] = 0.0f;
      continue;
    }
    const T* z = logits[r];
    float max_raw = kNegInf;
#pragma omp simd reduction(max : max_raw)
    for (int64_t j = 0; j < vocab; ++j) max_raw = std::max(max_raw, to_float(z[j]));
    const float m = max_raw * inv_temperature;  // temperature > 0 keeps the argmax
    float sum_e, sum_ed;
    if (entropy) {
      shifted_exp_sums<true>(z, vocab, inv_temperature, m, sum_e, sum_ed);
    } else {
      shifted_exp_sums<false>(z, vocab, inv_temperature, m, sum_e, sum_ed);
    }
    const float log_sum = std::log(sum_e);
    lse[r] = m + log_sum;
    logprobs[r] = to_float(z[labels[r]]) * inv_temperature - lse[r];
    if (entropy) entropy[r] = log_sum - sum_ed / sum_e;
  }
}

template <typename T>
FASTRLHF_MULTIVERSION void token_logprobs_backward(Rows<T> logits, int64_t vocab, const int64_t* labels, const float* lse,
                             const float* entropy, const float* grad_logprobs, const float* grad_entropy,
                             float temperature, int64_t ignore_index, int64_t row_begin, int64_t row_end,
                             T* grad_logits) {
  const float inv_temperature = 1.0f / temperature;
  for (int64_t r = row_begin; r < row_end; ++r) {
    T* out = grad_logits + r * vocab;
    const int64_t label = labels[r];
    if (label == ignore_index) {
      for (int64_t j = 0; j < vocab; ++j) out[j] = from_float<T>(0.0f);
      continue;
    }
    const T* z = logits[r];
    const float g_logprob = grad_logprobs ? grad_logprobs[r] : 0.0f;
    const float g_entropy = grad_entropy ? grad_entropy[r] : 0.0f;
    const float h = grad_entropy ? entropy[r] : 0.0f, row_lse = lse[r];
#pragma omp simd
    for (int64_t j = 0; j < vocab; ++j) {
      out[j] = from_float<T>(softmax_grad(to_float(z[j]) * inv_temperature - row_lse, g_logprob, g_entropy, h) *
                             inv_temperature);
    }
    const float at_label = softmax_grad(to_float(z[label]) * inv_temperature - row_lse, g_logprob, g_entropy, h);
    out[label] = from_float<T>((at_label + g_logprob) * inv_temperature);
  }
}

#define FASTRLHF_INSTANTIATE(T)                                                                             \
  template void token_logprobs_forward<T>(Rows<T>, int64_t, const int64_t*, float, int64_t, int64_t,       \
                                          int64_t, float*, float*, float*);                                 \
  template void token_logprobs_backward<T>(Rows<T>, int64_t, const int64_t*, const float*, const float*,    \
                                           const float*, const float*, float, int64_t, int64_t, int64_t, T*);
FASTRLHF_INSTANTIATE(float)
FASTRLHF_INSTANTIATE(bf16)
FASTRLHF_INSTANTIATE(fp16)
#undef FASTRLHF_INSTANTIATE

}  // namespace fastrlhf
