// Binding helpers shared by masked_mean, masked_whiten and the PPO losses (kernels in cpu/masked_reduction.h).
#pragma once

#include <string>

#include "bindings/common.h"
#include "cpu/masked_reduction.h"

namespace fastrlhf {

constexpr int64_t kGrainTokens = 1 << 15;  // elements per thread chunk, at least

// The mask as the kernels read it: bool bytes, shaped like `like`.
const uint8_t* mask_data(const at::Tensor& mask, const at::Tensor& like);

// float dtype, contiguous, on CPU, shaped like `like` (the ops normalise; this guards the contract).
void check_input(const at::Tensor& t, const char* name, const at::Tensor& like);

Reduction parse_reduction(const std::string& reduction);

// The moments of the masked elements of contiguous x: chunks in parallel, then merged serially.
Moments moments_of(const at::Tensor& x, const at::Tensor& mask);

// The forward of a PPO loss over [R, T] inputs: rows_fn(row_begin, row_end, token_grad, partials) on
// the rows in parallel, then the serial finalize. -> (loss, stats [n_stats], token_grad, row_scale).
template <typename RowsFn>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> loss_forward(const at::Tensor& input, int64_t n_stats,
                                                                        const std::string& reduction,
                                                                        const RowsFn& rows_fn) {
  const Reduction parsed = parse_reduction(reduction);
  const int64_t rows = input.size(0), tokens = input.size(1);
  auto options = input.options().dtype(at::kFloat);
  auto loss = at::empty({}, options), stats = at::empty({n_stats}, options);
  auto token_grad = at::empty({rows, tokens}, options), row_scale = at::empty({rows}, options);
  auto partials = at::empty({kFirstStat + n_stats, rows}, options);
  float* grad = token_grad.data_ptr<float>();
  float* sums = partials.data_ptr<float>();
  parallel_rows(rows, kGrainTokens / std::max<int64_t>(tokens, 1),
                [&](int64_t begin, int64_t end) { rows_fn(begin, end, grad, sums); });
  finalize_loss(sums, rows, n_stats, parsed, loss.data_ptr<float>(), stats.data_ptr<float>(),
                row_scale.data_ptr<float>());
  return {loss, stats, token_grad, row_scale};
}

}  // namespace fastrlhf
