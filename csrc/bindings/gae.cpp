#include "bindings/common.h"
#include "cpu/gae.h"

namespace fastrlhf {
namespace {

constexpr int64_t kGrainElements = 1 << 14;  // tokens per thread chunk, at least

std::tuple<at::Tensor, at::Tensor> gae_rows(const at::Tensor& rewards, const at::Tensor& values, const at::Tensor& mask,
                                            double gamma, double lam) {
  check_cpu(rewards, "rewards");
  check_cpu(values, "values");
  check_cpu(mask, "mask");
  TORCH_CHECK_VALUE(rewards.dim() == 2 && rewards.is_contiguous(), "rewards must be a contiguous [R, T] tensor");
  TORCH_CHECK_VALUE(values.sizes() == rewards.sizes() && values.is_contiguous() && mask.sizes() == rewards.sizes() &&
                        mask.is_contiguous(), "values and mask must be contiguous with the shape of rewards");
  TORCH_CHECK_TYPE(values.scalar_type() == rewards.scalar_type(), "values must have the dtype of rewards");
  TORCH_CHECK_TYPE(mask.scalar_type() == at::kBool, "mask must be bool");
  const int64_t rows = rewards.size(0), length = rewards.size(1);
  auto advantages = at::empty({rows, length}, rewards.options().dtype(at::kFloat));
  auto returns = at::empty_like(advantages);
  dispatch_storage(rewards.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    parallel_rows(rows, kGrainElements / std::max<int64_t>(length, 1), [&](int64_t begin, int64_t end) {
      gae<T>(data<T>(rewards), data<T>(values), mask.data_ptr<bool>(), length, float(gamma), float(lam), begin, end,
             advantages.data_ptr<float>(), returns.data_ptr<float>());
    });
  });
  return {advantages, returns};
}

}  // namespace

void bind_gae(pybind11::module_& m) {
  m.def("gae", &gae_rows, "(advantages, returns) of [R, T] rewards and values",
        pybind11::call_guard<pybind11::gil_scoped_release>());
}

}  // namespace fastrlhf
