#include "bindings/masked_reduction.h"
#include "cpu/ppo_policy_loss.h"

namespace fastrlhf {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> forward(const at::Tensor& logprobs, const at::Tensor& old_logprobs,
                                                                   const at::Tensor& advantages, const at::Tensor& mask,
                                                                   double clip_eps, double clip_eps_high, double dual_clip,
                                                                   const std::string& reduction) {
  check_input(logprobs, "logprobs", logprobs);
  TORCH_CHECK_VALUE(logprobs.dim() == 2, "logprobs must be [R, T]");
  check_input(old_logprobs, "old_logprobs", logprobs);
  check_input(advantages, "advantages", logprobs);
  const uint8_t* m = mask_data(mask, logprobs);
  const PolicyClip clip{float(clip_eps), float(clip_eps_high), float(dual_clip)};
  return dispatch_storage(logprobs.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    return loss_forward(logprobs, kPolicyStats, reduction, [&](int64_t begin, int64_t end, float* grad, float* sums) {
      ppo_policy_loss_rows<T>(data<T>(logprobs), data<T>(old_logprobs), data<T>(advantages), m, logprobs.size(1), clip,
                              logprobs.size(0), begin, end, grad, sums);
    });
  });
}

}  // namespace

void bind_ppo_policy_loss(pybind11::module_& m) {
  m.def("ppo_policy_loss_forward", &forward, "loss, stats, token_grad, row_scale of the PPO policy loss",
        pybind11::call_guard<pybind11::gil_scoped_release>());
}

}  // namespace fastrlhf
