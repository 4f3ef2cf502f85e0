// fastrlhf::ppo_value_loss: the CPU kernel (cpu/ppo_value_loss.h) and the autograd that serves every
// device (the backward is fastrlhf::ppo_loss_backward, see masked_reduction.h).
#include "bindings/masked_reduction.h"
#include "cpu/ppo_value_loss.h"

namespace fastrlhf {
namespace {

LossOutputs forward_cpu(const at::Tensor& values, const at::Tensor& old_values, const at::Tensor& returns,
                        const at::Tensor& mask, double clip_eps, int64_t reduction) {
  const int64_t tokens =
      check_loss_inputs(values, "values", old_values, "old_values", returns, "returns", reduction);
  TORCH_CHECK_VALUE(clip_eps > 0, "clip_eps must be > 0 (inf: none), got ", clip_eps);
  const at::Tensor v = values.contiguous(), old = old_values.contiguous(), ret = returns.contiguous();
  const at::Tensor kept = kept_mask(mask, values, "values");
  const uint8_t* m = data<uint8_t>(kept);
  return dispatch_storage(v.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    return loss_forward(v, kValueStats, reduction, [&](int64_t begin, int64_t end, float* grad, float* sums) {
      ppo_value_loss_rows<T>(data<T>(v), data<T>(old), data<T>(ret), m, tokens, float(clip_eps), v.numel() / tokens,
                             begin, end, grad, sums);
    });
  });
}

// The kernel for the inputs' device, below autograd.
LossOutputs device_kernel(const at::Tensor& values, const at::Tensor& old_values, const at::Tensor& returns,
                          const at::Tensor& mask, double clip_eps, int64_t reduction) {
  static const auto op = registered_op<decltype(forward_cpu)>("fastrlhf::ppo_value_loss");
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  return op.call(values, old_values, returns, mask, clip_eps, reduction);
}

class PpoValueLoss : public torch::autograd::Function<PpoValueLoss> {
 public:
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx, const at::Tensor& values,
                                                const at::Tensor& old_values, const at::Tensor& returns,
                                                const at::Tensor& mask, double clip_eps, int64_t reduction) {
    return save_loss_outputs(ctx, values, device_kernel(values, old_values, returns, mask, clip_eps, reduction));
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    return loss_backward(ctx, grads, 6);
  }
};

LossOutputs forward_autograd(const at::Tensor& values, const at::Tensor& old_values, const at::Tensor& returns,
                             const at::Tensor& mask, double clip_eps, int64_t reduction) {
  if (!torch::autograd::compute_requires_grad(values)) {  // nothing to record: the kernel alone
    return device_kernel(values, old_values, returns, mask, clip_eps, reduction);
  }
  auto out = PpoValueLoss::apply(values, old_values, returns, mask, clip_eps, reduction);
  return {out[0], out[1], out[2], out[3]};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastrlhf, CPU, m) { m.impl("ppo_value_loss", &forward_cpu); }

TORCH_LIBRARY_IMPL(fastrlhf, Autograd, m) { m.impl("ppo_value_loss", &forward_autograd); }

}  // namespace fastrlhf
