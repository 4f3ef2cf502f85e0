#include "bindings/masked_reduction.h"
#include "cpu/ppo_value_loss.h"

namespace fastrlhf {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> forward(const at::Tensor& values, const at::Tensor& old_values,
                                                                   const at::Tensor& returns, const at::Tensor& mask,
                                                                   double clip_eps, const std::string& reduction) {
  check_input(values, "values", values);
  TORCH_CHECK_VALUE(values.dim() == 2, "values must be [R, T]");
  check_input(old_values, "old_values", values);
  check_input(returns, "returns", values);
  const uint8_t* m = mask_data(mask, values);
  return dispatch_storage(values.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    return loss_forward(values, kValueStats, reduction, [&](int64_t begin, int64_t end, float* grad, float* sums) {
      ppo_value_loss_rows<T>(data<T>(values), data<T>(old_values), data<T>(returns), m, values.size(1), float(clip_eps),
                             values.size(0), begin, end, grad, sums);
    });
  });
}

}  // namespace

void bind_ppo_value_loss(pybind11::module_& m) {
  m.def("ppo_value_loss_forward", &forward, "loss, stats, token_grad, row_scale of the PPO value loss",
        pybind11::call_guard<pybind11::gil_scoped_release>());
}

}  // namespace fastrlhf
