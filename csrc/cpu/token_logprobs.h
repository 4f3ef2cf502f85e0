// token_logprobs over rows [row_begin, row_end) of [N, V] logits. See kernels/token_logprobs.py for the math.
#pragma once

#include "cpu/numeric.h"

namespace fastrlhf {

// What the backward needs of a row's softmax: with d_j = (z_j - max_logit) / temperature,
// log p_j = d_j - log_sum and log_sum = log sum_j exp(d_j). Shifting by the max before scaling keeps
// d exact at the max and small elsewhere, so low temperatures (large 1/T) lose no precision.
struct SoftmaxRow {
  float max_logit, log_sum;
};

// Writes logprobs, stats and (if entropy is not null) the entropy of the tempered rows; all are 0 on
// rows whose label is ignore_index (their logits are never read). Other labels must lie in [0, vocab).
// inv_temperature = 1 / temperature, finite and > 0.
template <typename T>
void token_logprobs_forward(Rows<T> logits, int64_t vocab, const int64_t* labels, float inv_temperature,
                            int64_t ignore_index, int64_t row_begin, int64_t row_end, float* logprobs,
                            float* entropy, SoftmaxRow* stats);

// Writes grad_logits ([N, vocab], contiguous) for upstream gradients grad_logprobs and/or
// grad_entropy (either may be null, meaning 0).
template <typename T>
void token_logprobs_backward(Rows<T> logits, int64_t vocab, const int64_t* labels, const SoftmaxRow* stats,
                             const float* entropy, const float* grad_logprobs, const float* grad_entropy,
                             float inv_temperature, int64_t ignore_index, int64_t row_begin, int64_t row_end,
                             T* grad_logits);

}  // namespace fastrlhf
