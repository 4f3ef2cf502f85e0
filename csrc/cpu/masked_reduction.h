// Pieces shared by the masked reductions; see kernels/_masked_reduction.py for the design.
//  - Moments (masked_mean over everything, masked_whiten): count, mean and M2 per block, merged with
//    Chan's formula, never E[x^2] - E[x]^2.
//  - The PPO losses: their rows kernels write per-row sums (LossPartial); finalize_loss turns them into
//    the loss, the stats and a per-row gradient scale; loss_backward is the one elementwise backward.
#pragma once

#include "cpu/numeric.h"

namespace fastrlhf {

// By value: std::min / std::max return references, which GCC 12 turns into loads through a selected
// address inside hot loops, and then does not vectorise them.
inline float min_of(float a, float b) { return b < a ? b : a; }
inline float max_of(float a, float b) { return a < b ? b : a; }
inline float clamp_of(float x, float lo, float hi) { return min_of(max_of(x, lo), hi); }

// count, mean and M2 = sum (x - mean)^2 of a set of elements.
struct Moments {
  double count = 0, mean = 0, m2 = 0;
};

// The moments of the union of two disjoint sets (Chan, Golub and LeVeque).
Moments merge(const Moments& a, const Moments& b);

// The moments of x[i] over i in [begin, end) where mask[i].
template <typename T>
Moments masked_moments(const T* x, const uint8_t* mask, int64_t begin, int64_t end);

// The codes of REDUCTIONS in fastrlhf/codes.py (a name's index).
enum class Reduction { kTokenMean, kSeqMeanTokenMean, kSeqMeanTokenSum };

// Row sums of a loss over [rows, tokens]: partials[k * rows + r] is, over the masked tokens of row r,
// the sum of 1 (kCount), of the token loss (kLoss) and of statistic s (kFirstStat + s).
enum LossPartial : int64_t { kCount = 0, kLoss = 1, kFirstStat = 2 };

// From the partials of all rows: the reduced loss, each statistic's masked token mean and each row's
// gradient scale (d loss / d token loss for the row's tokens). Serial, O(rows), in double.
void finalize_loss(const float* partials, int64_t rows, int64_t n_stats, Reduction reduction, float* loss,
                   float* stats, float* row_scale);

// grad_input[r, t] = grad_loss * token_grad[r, t] * row_scale[r] for rows [row_begin, row_end).
template <typename T>
void loss_backward(float grad_loss, const float* token_grad, const float* row_scale, int64_t tokens,
                   int64_t row_begin, int64_t row_end, T* grad_input);

}  // namespace fastrlhf
