// token_logprobs over rows [row_begin, row_end) of [N, V] logits. See kernels/token_logprobs.py for the math.
#pragma once

#include "cpu/numeric.h"

namespace fastrlhf {

// Writes logprobs, lse and (if entropy is not null) the entropy of the tempered rows; all three are
// 0 on rows whose label is ignore_index. Other labels must lie in [0, vocab).
template <typename T>
void token_logprobs_forward(Rows<T> logits, int64_t vocab, const int64_t* labels, float temperature,
                            int64_t ignore_index, int64_t row_begin, int64_t row_end, float* logprobs,
                            float* entropy, float* lse);

// Writes grad_logits ([N, vocab], contiguous) for upstream gradients grad_logprobs and/or
// grad_entropy (either may be null, meaning 0).
template <typename T>
void token_logprobs_backward(Rows<T> logits, int64_t vocab, const int64_t* labels, const float* lse,
                             const float* entropy, const float* grad_logprobs, const float* grad_entropy,
                             float temperature, int64_t ignore_index, int64_t row_begin, int64_t row_end,
                             T* grad_logits);

}  // namespace fastrlhf
