// fastrlhf::ppo_policy_loss: the CPU kernel (cpu/ppo_policy_loss.h) and the autograd that serves every
// device (the backward is fastrlhf::ppo_loss_backward, see masked_reduction.h).
#include "bindings/masked_reduction.h"
#include "cpu/ppo_policy_loss.h"

namespace fastrlhf {
namespace {

LossOutputs forward_cpu(const at::Tensor& logprobs, const at::Tensor& old_logprobs, const at::Tensor& advantages,
                        const at::Tensor& mask, double clip_eps, double clip_eps_high, double dual_clip,
                        int64_t reduction) {
  const int64_t tokens = check_loss_inputs(logprobs, "logprobs", old_logprobs, "old_logprobs", advantages,
                                           "advantages", reduction);
  TORCH_CHECK_VALUE(clip_eps > 0 && clip_eps_high > 0, "clip_eps and clip_eps_high must be > 0, got ", clip_eps,
                    " and ", clip_eps_high);
  TORCH_CHECK_VALUE(dual_clip > 1, "dual_clip must be > 1 (inf: none), got ", dual_clip);
  const at::Tensor x = logprobs.contiguous(), old = old_logprobs.contiguous(), adv = advantages.contiguous();
  const at::Tensor kept = kept_mask(mask, logprobs, "logprobs");
  const uint8_t* m = data<uint8_t>(kept);
  const PolicyClip clip{float(clip_eps), float(clip_eps_high), float(dual_clip)};
  return dispatch_storage(x.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    return loss_forward(x, kPolicyStats, reduction, [&](int64_t begin, int64_t end, float* grad, float* sums) {
      ppo_policy_loss_rows<T>(data<T>(x), data<T>(old), data<T>(adv), m, tokens, clip, x.numel() / tokens, begin, end,
                              grad, sums);
    });
  });
}

// The kernel for the inputs' device, below autograd.
LossOutputs device_kernel(const at::Tensor& logprobs, const at::Tensor& old_logprobs, const at::Tensor& advantages,
                          const at::Tensor& mask, double clip_eps, double clip_eps_high, double dual_clip,
                          int64_t reduction) {
  static const auto op = registered_op<decltype(forward_cpu)>("fastrlhf::ppo_policy_loss");
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  return op.call(logprobs, old_logprobs, advantages, mask, clip_eps, clip_eps_high, dual_clip, reduction);
}

class PpoPolicyLoss : public torch::autograd::Function<PpoPolicyLoss> {
 public:
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx, const at::Tensor& logprobs,
                                                const at::Tensor& old_logprobs, const at::Tensor& advantages,
                                                const at::Tensor& mask, double clip_eps, double clip_eps_high,
                                                double dual_clip, int64_t reduction) {
    return save_loss_outputs(ctx, logprobs, device_kernel(logprobs, old_logprobs, advantages, mask, clip_eps,
                                                          clip_eps_high, dual_clip, reduction));
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    return loss_backward(ctx, grads, 8);
  }
};

LossOutputs forward_autograd(const at::Tensor& logprobs, const at::Tensor& old_logprobs, const at::Tensor& advantages,
                             const at::Tensor& mask, double clip_eps, double clip_eps_high, double dual_clip,
                             int64_t reduction) {
  if (!torch::autograd::compute_requires_grad(logprobs)) {  // nothing to record: the kernel alone
    return device_kernel(logprobs, old_logprobs, advantages, mask, clip_eps, clip_eps_high, dual_clip, reduction);
  }
  auto out =
      PpoPolicyLoss::apply(logprobs, old_logprobs, advantages, mask, clip_eps, clip_eps_high, dual_clip, reduction);
  return {out[0], out[1], out[2], out[3]};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastrlhf, CPU, m) { m.impl("ppo_policy_loss", &forward_cpu); }

TORCH_LIBRARY_IMPL(fastrlhf, Autograd, m) { m.impl("ppo_policy_loss", &forward_autograd); }

}  // namespace fastrlhf
