// fastrlhf::ppo_loss_backward (the backward of both losses) and the helpers of masked_reduction.h.
#include "bindings/masked_reduction.h"

#include <vector>

namespace fastrlhf {

Moments moments_of(const at::Tensor& x, const at::Tensor& mask) {
  const uint8_t* m = data<uint8_t>(mask);
  const int64_t n = x.numel(), chunks = (n + kGrainTokens - 1) / kGrainTokens;
  std::vector<Moments> partials(chunks);
  dispatch_storage(x.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    parallel_rows(chunks, 1, [&](int64_t begin, int64_t end) {
      for (int64_t c = begin; c < end; ++c) {
        partials[c] = masked_moments<T>(data<T>(x), m, c * kGrainTokens, std::min(n, (c + 1) * kGrainTokens));
      }
    });
  });
  Moments total;
  for (const Moments& part : partials) total = merge(total, part);
  return total;
}

int64_t check_loss_inputs(const at::Tensor& input, const char* name, const at::Tensor& old, const char* old_name,
                          const at::Tensor& other, const char* other_name, int64_t reduction) {
  check_float(input, name);
  check_like(old, old_name, input, name);
  check_like(other, other_name, input, name);
  TORCH_CHECK_VALUE(reduction >= 0 && reduction <= int64_t(Reduction::kSeqMeanTokenSum),
                    "reduction must be a code in [0, 2], got ", reduction);
  return time_length(input, name);
}

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

variable_list save_loss_outputs(AutogradContext* ctx, const at::Tensor& input, const LossOutputs& outputs) {
  const auto& [loss, stats, token_grad, row_scale] = outputs;
  ctx->save_for_backward({token_grad, row_scale});
  ctx->saved_data["dtype"] = input.scalar_type();
  ctx->mark_non_differentiable({stats, token_grad, row_scale});
  ctx->set_materialize_grads(false);  // no zero tensors for the outputs without gradient
  return {loss, stats, token_grad, row_scale};
}

namespace {

at::Tensor loss_backward_cpu(const at::Tensor& grad_loss, const at::Tensor& token_grad, const at::Tensor& row_scale,
                             at::ScalarType dtype) {
  TORCH_CHECK_VALUE(token_grad.device().is_cpu() && token_grad.scalar_type() == at::kFloat && token_grad.numel() > 0,
                    "token_grad must be a float32 CPU tensor [..., T]");
  const int64_t tokens = time_length(token_grad, "token_grad"), rows = token_grad.numel() / tokens;
  const float g = float_of_shape(grad_loss, "grad_loss", {}).item<float>();  // a CPU scalar: no device sync
  const at::Tensor grad_rows = token_grad.contiguous(), scale = float_of_shape(row_scale, "row_scale", {rows});
  auto grad = at::empty(token_grad.sizes(),
                        token_grad.options().dtype(dtype).memory_format(at::MemoryFormat::Contiguous));
  dispatch_storage(dtype, [&](auto tag) {
    using T = decltype(tag);
    parallel_rows(rows, kGrainTokens / tokens, [&](int64_t begin, int64_t end) {
      loss_backward<T>(g, grad_rows.data_ptr<float>(), scale.data_ptr<float>(), tokens, begin, end,
                       mutable_data<T>(grad));
    });
  });
  return grad;
}

}  // namespace

variable_list loss_backward(AutogradContext* ctx, const variable_list& grads, size_t n_inputs) {
  static const auto op = registered_op<decltype(loss_backward_cpu)>("fastrlhf::ppo_loss_backward");
  variable_list result(n_inputs);  // only the first input (logprobs, values) gets a gradient
  if (grads[0].defined()) {
    const variable_list saved = ctx->get_saved_variables();
    result[0] = op.call(grads[0], saved[0], saved[1], ctx->saved_data["dtype"].toScalarType());
  }
  return result;
}

TORCH_LIBRARY_IMPL(fastrlhf, CPU, m) { m.impl("ppo_loss_backward", &loss_backward_cpu); }

}  // namespace fastrlhf
