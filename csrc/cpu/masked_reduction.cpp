#include "cpu/masked_reduction.h"

#include <algorithm>

namespace fastrlhf {

namespace {
constexpr int64_t kMomentsBlock = 1024;  // a block's second pass reads it from L1
}  // namespace

Moments merge(const Moments& a, const Moments& b) {
  const double count = a.count + b.count;
  if (count == 0) return a;
  const double delta = b.mean - a.mean, weight_b = b.count / count;
  return {count, a.mean + delta * weight_b, a.m2 + b.m2 + delta * delta * a.count * weight_b};
}

// count, mean and M2 of the masked x[i], i in [begin, end), accumulated in Acc: the mean first, then
// M2 about it (two passes, the second from L1).
template <typename Acc, typename T>
Moments block_moments(const T* x, const uint8_t* mask, int64_t begin, int64_t end) {
  Acc count = 0, sum = 0;
#pragma omp simd reduction(+ : count, sum)
  for (int64_t i = begin; i < end; ++i) {
    count += masked(mask[i], 1.0f);
    sum += masked(mask[i], to_float(x[i]));
  }
  if (count == 0) return {};
  const Acc mean = sum / count;
  Acc m2 = 0;
#pragma omp simd reduction(+ : m2)
  for (int64_t i = begin; i < end; ++i) {
    const Acc d = Acc(to_float(x[i])) - mean;
    m2 += masked(mask[i], d * d);
  }
  return {double(count), double(mean), double(m2)};
}

// Per block: the moments in float (float sums vectorise twice as wide), again in double where they
// overflowed float (|x - mean| past ~1e19 squares past float's range), then Chan's merge in double.
template <typename T>
FASTRLHF_MULTIVERSION Moments masked_moments(const T* x, const uint8_t* mask, int64_t begin, int64_t end) {
  Moments total;
  for (int64_t block = begin; block < end; block += kMomentsBlock) {
    const int64_t block_end = std::min(end, block + kMomentsBlock);
    Moments moments = block_moments<float>(x, mask, block, block_end);
    if (!std::isfinite(moments.mean) || !std::isfinite(moments.m2)) {
      moments = block_moments<double>(x, mask, block, block_end);
    }
    total = merge(total, moments);
  }
  return total;
}

void finalize_loss(const float* partials, int64_t rows, int64_t n_stats, Reduction reduction, float* loss,
                   float* stats, float* row_scale) {
  const float* count = partials + kCount * rows;
  const float* row_loss = partials + kLoss * rows;
  double tokens = 0, sequences = 0, losses = 0;  // losses: sum of row losses, or of row mean losses
  for (int64_t r = 0; r < rows; ++r) {
    tokens += count[r];
    sequences += count[r] > 0;  // sequences without a token do not count
    losses += reduction == Reduction::kSeqMeanTokenMean ? row_loss[r] / std::max(count[r], 1.0f) : row_loss[r];
  }
  tokens = std::max(tokens, 1.0);
  sequences = std::max(sequences, 1.0);
  *loss = float(losses / (reduction == Reduction::kTokenMean ? tokens : sequences));
  for (int64_t s = 0; s < n_stats; ++s) {
    const float* stat = partials + (kFirstStat + s) * rows;
    double sum = 0;
    for (int64_t r = 0; r < rows; ++r) sum += stat[r];
    stats[s] = float(sum / tokens);
  }
  for (int64_t r = 0; r < rows; ++r) {
    switch (reduction) {
      case Reduction::kTokenMean: row_scale[r] = float(1.0 / tokens); break;
      case Reduction::kSeqMeanTokenMean: row_scale[r] = count[r] > 0 ? float(1.0 / (count[r] * sequences)) : 0.0f; break;
      case Reduction::kSeqMeanTokenSum: row_scale[r] = float(1.0 / sequences); break;
    }
  }
}

template <typename T>
FASTRLHF_MULTIVERSION void loss_backward(float grad_loss, const float* token_grad, const float* row_scale,
                                         int64_t tokens, int64_t row_begin, int64_t row_end, T* grad_input) {
  for (int64_t r = row_begin; r < row_end; ++r) {
    const float scale = grad_loss * row_scale[r];
    const float* g = token_grad + r * tokens;
    T* out = grad_input + r * tokens;
#pragma omp simd
    for (int64_t t = 0; t < tokens; ++t) out[t] = from_float<T>(g[t] * scale);
  }
}

#define FASTRLHF_INSTANTIATE(T)                                                            \
  template Moments masked_moments<T>(const T*, const uint8_t*, int64_t, int64_t);             \
  template void loss_backward<T>(float, const float*, const float*, int64_t, int64_t, int64_t, T*);
FASTRLHF_INSTANTIATE(float)
FASTRLHF_INSTANTIATE(bf16)
FASTRLHF_INSTANTIATE(fp16)
#undef FASTRLHF_INSTANTIATE

}  // namespace fastrlhf
