#include "bindings/common.h"
#include "cpu/kl_shaped_rewards.h"

namespace fastrlhf {
namespace {

constexpr int64_t kGrainElements = 1 << 15;  // tokens per thread chunk, at least

at::Tensor kl_shaped_rewards_rows(const at::Tensor& scores, const at::Tensor& kl, const at::Tensor& mask,
                                  double kl_coef, double score_clip) {
  check_cpu(kl, "kl");
  check_cpu(mask, "mask");
  TORCH_CHECK_VALUE(kl.dim() == 2 && kl.is_contiguous(), "kl must be a contiguous [R, T] tensor");
  TORCH_CHECK_VALUE(mask.sizes() == kl.sizes() && mask.is_contiguous(), "mask must be contiguous with the shape of kl");
  TORCH_CHECK_TYPE(mask.scalar_type() == at::kBool, "mask must be bool");
  const int64_t rows = kl.size(0), length = kl.size(1);
  TORCH_CHECK_VALUE(scores.numel() == rows, "scores has ", scores.numel(), " elements but kl has ", rows, " rows");
  auto row_scores = contiguous_float(scores, "scores");
  auto rewards = at::empty({rows, length}, kl.options().dtype(at::kFloat));
  dispatch_storage(kl.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    parallel_rows(rows, kGrainElements / std::max<int64_t>(length, 1), [&](int64_t begin, int64_t end) {
      kl_shaped_rewards<T>(row_scores.data_ptr<float>(), data<T>(kl), mask.data_ptr<bool>(), length, float(kl_coef),
                           float(score_clip), begin, end, rewards.data_ptr<float>());
    });
  });
  return rewards;
}

}  // namespace

void bind_kl_shaped_rewards(pybind11::module_& m) {
  m.def("kl_shaped_rewards", &kl_shaped_rewards_rows, "per-token rewards from sequence scores and per-token kl",
        pybind11::call_guard<pybind11::gil_scoped_release>());
}

}  // namespace fastrlhf
