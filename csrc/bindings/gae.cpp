// fastrlhf::gae: the CPU kernel (cpu/gae.h). No gradient: autograd falls through to the kernel.
#include <atomic>

#include "bindings/common.h"
#include "cpu/gae.h"

namespace fastrlhf {
namespace {

constexpr int64_t kGrainElements = 1 << 14;  // tokens per thread chunk, at least

// After the kernel found a non-finite advantage: which input is at fault (NaN or inf at a masked
// position), else the recurrence overflowed float32.
void explain_non_finite(const at::Tensor& rewards, const at::Tensor& values, const at::Tensor& mask) {
  for (const auto& [t, name] : {std::pair{rewards, "rewards"}, std::pair{values, "values"}}) {
    TORCH_CHECK_VALUE(at::where(mask, t, 0).isfinite().all().item<bool>(), name,
                      " contains NaN or inf at a masked position");
  }
  TORCH_CHECK_VALUE(false, "the advantages overflow float32: rewards or values are too large");
}

std::tuple<at::Tensor, at::Tensor> gae_cpu(const at::Tensor& rewards, const at::Tensor& values, const at::Tensor& mask,
                                           double gamma, double lam) {
  check_float(rewards, "rewards");
  check_like(values, "values", rewards, "rewards");
  const int64_t length = time_length(rewards, "rewards");
  TORCH_CHECK_VALUE(gamma >= 0 && gamma <= 1, "gamma must be in [0, 1], got ", gamma);
  TORCH_CHECK_VALUE(lam >= 0 && lam <= 1, "lam must be in [0, 1], got ", lam);
  const at::Tensor r = rewards.contiguous(), v = values.contiguous(), m = kept_mask(mask, rewards, "rewards");
  const auto options = rewards.options().dtype(at::kFloat).memory_format(at::MemoryFormat::Contiguous);
  auto advantages = at::empty(rewards.sizes(), options), returns = at::empty(rewards.sizes(), options);
  std::atomic<bool> finite{true};
  dispatch_storage(rewards.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    parallel_rows(r.numel() / length, kGrainElements / length, [&](int64_t begin, int64_t end) {
      if (!gae<T>(data<T>(r), data<T>(v), m.data_ptr<bool>(), length, float(gamma), float(lam), begin, end,
                  advantages.data_ptr<float>(), returns.data_ptr<float>())) {
        finite = false;
      }
    });
  });
  if (!finite) explain_non_finite(r, v, m);
  return {advantages, returns};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastrlhf, CPU, m) { m.impl("gae", &gae_cpu); }

TORCH_LIBRARY_IMPL(fastrlhf, Autograd, m) { m.impl("gae", torch::CppFunction::makeFallthrough()); }

}  // namespace fastrlhf
