#include "cpu/token_logprobs.h"

#include <algorithm>

namespace fastrlhf {

namespace {

constexpr int64_t kSumBlock = 1024;  // partial sums per block keep fp32 rounding error small

// The row's shifted exp sum, split as ties + rest: ties counts the entries at the max (exp(0) = 1 each),
// rest sums exp(d_j) over the others. A rest far below 1 keeps its relative precision (added to 1 it
// would lose it), so log_sum = log(ties) + log1p(rest / ties) is accurate when the row is sharply
// peaked, and with it 1 - p at the label. When kEntropy, also sum_ed = sum_j exp(d_j) * d_j.
// d_j = (z_j - m) / T; an entry of nan is not at the max, so it reaches rest.
template <bool kEntropy, typename T>
FASTRLHF_MULTIVERSION void shifted_exp_sums(const T* z, int64_t vocab, float inv_temperature, float m, float& ties,
                                            float& rest, float& sum_ed) {
  ties = rest = sum_ed = 0.0f;
  for (int64_t begin = 0; begin < vocab; begin += kSumBlock) {
    const int64_t end = std::min(vocab, begin + kSumBlock);
    float block_ties = 0.0f, block_rest = 0.0f, block_ed = 0.0f;
#pragma omp simd reduction(+ : block_ties, block_rest, block_ed)
    for (int64_t j = begin; j < end; ++j) {
      const float d = (to_float(z[j]) - m) * inv_temperature;  // <= 0: m is the row's max
      const float e = exp_nonpositive(d);
      block_ties += masked(d == 0.0f, 1.0f);
      block_rest += masked(d != 0.0f, e);
      if (kEntropy) block_ed += e > 0.0f ? e * d : 0.0f;  // a logit of -inf adds 0, not nan
    }
    ties += block_ties;
    rest += block_rest;
    sum_ed += block_ed;
  }
}

// d/dz_j of g_entropy * entropy at p_j = exp(logp): -g_entropy * p_j * (logp + entropy), 0 where p_j = 0
// (logp may be -inf there).
inline float entropy_grad(float p, float logp, float g_entropy, float entropy) {
  const float term = p * (logp + entropy);
  return -g_entropy * (p > 0.0f ? term : 0.0f);
}

}  // namespace

// Each row is read twice (max, then the sums); the second read hits cache for any vocabulary
// that fits in L2, so memory traffic is one read of the logits.
template <typename T>
FASTRLHF_MULTIVERSION void token_logprobs_forward(Rows<T> logits, int64_t vocab, const int64_t* labels,
                                                  float inv_temperature, int64_t ignore_index, int64_t row_begin,
                                                  int64_t row_end, float* logprobs, float* entropy, SoftmaxRow* stats) {
  for (int64_t r = row_begin; r < row_end; ++r) {
    if (labels[r] == ignore_index) {
      logprobs[r] = 0.0f;
      stats[r] = {0.0f, 0.0f};
      if (entropy) entropy[r] = 0.0f;
      continue;
    }
    const T* z = logits[r];
    float m = kNegInf;
#pragma omp simd reduction(max : m)
    for (int64_t j = 0; j < vocab; ++j) m = std::max(m, to_float(z[j]));
    float ties, rest, sum_ed;
    if (entropy) {
      shifted_exp_sums<true>(z, vocab, inv_temperature, m, ties, rest, sum_ed);
    } else {
      shifted_exp_sums<false>(z, vocab, inv_temperature, m, ties, rest, sum_ed);
    }
    const float sum_e = ties + rest, log_sum = std::log(ties) + std::log1p(rest / ties);
    stats[r] = {m, log_sum};
    logprobs[r] = (to_float(z[labels[r]]) - m) * inv_temperature - log_sum;
    if (entropy) entropy[r] = log_sum - sum_ed / sum_e;
  }
}

template <typename T>
FASTRLHF_MULTIVERSION void token_logprobs_backward(Rows<T> logits, int64_t vocab, const int64_t* labels,
                                                   const SoftmaxRow* stats, const float* entropy,
                                                   const float* grad_logprobs, const float* grad_entropy,
                                                   float inv_temperature, int64_t ignore_index, int64_t row_begin,
                                                   int64_t row_end, T* grad_logits) {
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
    const float h = grad_entropy ? entropy[r] : 0.0f, m = stats[r].max_logit, log_sum = stats[r].log_sum;
#pragma omp simd
    for (int64_t j = 0; j < vocab; ++j) {
      const float logp = (to_float(z[j]) - m) * inv_temperature - log_sum, p = exp_fast(logp);
      out[j] = from_float<T>((-g_logprob * p + entropy_grad(p, logp, g_entropy, h)) * inv_temperature);
    }
    // At the label d logprob / dz = 1 - p, which cancels when p is near 1: -expm1(log p) keeps its
    // relative precision (at T = 1e-3 the exact value is ~0, not 1 - p's rounding error times 1000).
    const float logp = (to_float(z[label]) - m) * inv_temperature - log_sum, p = std::exp(logp);
    out[label] = from_float<T>((-g_logprob * std::expm1(logp) + entropy_grad(p, logp, g_entropy, h)) * inv_temperature);
  }
}

#define FASTRLHF_INSTANTIATE(T)                                                                              \
  template void token_logprobs_forward<T>(Rows<T>, int64_t, const int64_t*, float, int64_t, int64_t, int64_t, \
                                          float*, float*, SoftmaxRow*);                                      \
  template void token_logprobs_backward<T>(Rows<T>, int64_t, const int64_t*, const SoftmaxRow*, const float*, \
                                           const float*, const float*, float, int64_t, int64_t, int64_t, T*);
FASTRLHF_INSTANTIATE(float)
FASTRLHF_INSTANTIATE(bf16)
FASTRLHF_INSTANTIATE(fp16)
#undef FASTRLHF_INSTANTIATE

}  // namespace fastrlhf
