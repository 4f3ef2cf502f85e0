// Binding helpers shared by masked_mean, masked_whiten and the PPO losses (kernels in cpu/masked_reduction.h).
#pragma once

#include <vector>

#include "bindings/common.h"
#include "cpu/masked_reduction.h"

namespace fastrlhf {

constexpr int64_t kGrainTokens = 1 << 15;  // elements per thread chunk, at least

// The moments of the masked elements of contiguous x: chunks in parallel, then merged serially.
Moments moments_of(const at::Tensor& x, const at::Tensor& mask);

// Checks the inputs of a PPO loss: float tensors of one shape and dtype, a mask like them, a reduction
// code. Returns the number of tokens per row (the last dim).
int64_t check_loss_inputs(const at::Tensor& input, const char* name, const at::Tensor& old, const char* old_name,
                          const at::Tensor& other, const char* other_name, int64_t reduction);

// The forward of a PPO loss over [..., T] inputs (contiguous, R rows of T): rows_fn(row_begin, row_end,
// token_grad, partials) on the rows in parallel, then the serial finalize.
// -> (loss, stats [n_stats], token_grad shaped like input, row_scale [R]).
template <typename RowsFn>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> loss_forward(const at::Tensor& input, int64_t n_stats,
                                                                        int64_t reduction, const RowsFn& rows_fn) {
  const int64_t tokens = input.size(-1), rows = input.numel() / tokens;
  const auto options = input.options().dtype(at::kFloat).memory_format(at::MemoryFormat::Contiguous);
  auto loss = at::empty({}, options), stats = at::empty({n_stats}, options);
  auto token_grad = at::empty(input.sizes(), options), row_scale = at::empty({rows}, options);
  std::vector<float> partials((kFirstStat + n_stats) * rows);
  float* grad = token_grad.data_ptr<float>();
  float* sums = partials.data();
  parallel_rows(rows, kGrainTokens / tokens, [&](int64_t begin, int64_t end) { rows_fn(begin, end, grad, sums); });
  finalize_loss(sums, rows, n_stats, Reduction(reduction), loss.data_ptr<float>(), stats.data_ptr<float>(),
                row_scale.data_ptr<float>());
  return {loss, stats, token_grad, row_scale};
}

// The autograd shared by the losses: the forward op's outputs (loss, stats, token_grad, row_scale)
// are saved; d loss / d input (the first input only) is fastrlhf::ppo_loss_backward on their device.
using LossOutputs = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>;
torch::autograd::variable_list save_loss_outputs(torch::autograd::AutogradContext* ctx, const at::Tensor& input,
                                                 const LossOutputs& outputs);
torch::autograd::variable_list loss_backward(torch::autograd::AutogradContext* ctx,
                                             const torch::autograd::variable_list& grads, size_t n_inputs);

}  // namespace fastrlhf
