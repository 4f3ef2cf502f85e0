// fastrlhf::kl_shaped_rewards: the CPU kernel (cpu/kl_shaped_rewards.h). No gradient: autograd falls
// through to the kernel.
#include "bindings/common.h"
#include "cpu/kl_shaped_rewards.h"

namespace fastrlhf {
namespace {

constexpr int64_t kGrainElements = 1 << 15;  // tokens per thread chunk, at least

at::Tensor kl_shaped_rewards_cpu(const at::Tensor& scores, const at::Tensor& kl, const at::Tensor& mask,
                                 double kl_coef, double score_clip) {
  check_float(kl, "kl");
  const int64_t length = time_length(kl, "kl"), rows = kl.numel() / length;
  check_float(scores, "scores");
  TORCH_CHECK_VALUE(scores.sizes() == kl.sizes().slice(0, kl.dim() - 1), "scores must have shape kl.shape[:-1] = ",
                    kl.sizes().slice(0, kl.dim() - 1), ", got ", scores.sizes());
  TORCH_CHECK_VALUE(std::isfinite(kl_coef), "kl_coef must be finite, got ", kl_coef);
  TORCH_CHECK_VALUE(score_clip > 0, "score_clip must be > 0 (inf: none), got ", score_clip);
  const at::Tensor row_scores = scores.to(at::kFloat).contiguous();
  const float* s = row_scores.data_ptr<float>();
  for (int64_t r = 0; r < rows; ++r) TORCH_CHECK_VALUE(std::isfinite(s[r]), "scores contains NaN or inf");
  const at::Tensor k = kl.contiguous(), m = kept_mask(mask, kl, "kl");
  auto rewards = at::empty(kl.sizes(), kl.options().dtype(at::kFloat).memory_format(at::MemoryFormat::Contiguous));
  dispatch_storage(kl.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    parallel_rows(rows, kGrainElements / length, [&](int64_t begin, int64_t end) {
      kl_shaped_rewards<T>(s, data<T>(k), m.data_ptr<bool>(), length, float(kl_coef), float(score_clip), begin, end,
                           rewards.data_ptr<float>());
    });
  });
  return rewards;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastrlhf, CPU, m) { m.impl("kl_shaped_rewards", &kl_shaped_rewards_cpu); }

TORCH_LIBRARY_IMPL(fastrlhf, Autograd, m) { m.impl("kl_shaped_rewards", torch::CppFunction::makeFallthrough()); }

}  // namespace fastrlhf
