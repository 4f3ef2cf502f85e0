// fastrlhf::masked_whiten: the CPU kernel (cpu/masked_whiten.h). No gradient: autograd falls through
// to the kernel.
#include "bindings/masked_reduction.h"
#include "cpu/masked_whiten.h"

namespace fastrlhf {
namespace {

// The moments pass (parallel chunks, serial merge), then the normalise pass.
at::Tensor whiten_cpu(const at::Tensor& x, const at::Tensor& mask, bool shift_mean, bool unbiased, double eps) {
  check_float(x, "x");
  TORCH_CHECK_VALUE(eps > 0, "eps must be > 0, got ", eps);
  const at::Tensor values = x.contiguous(), kept = kept_mask(mask, x, "x");
  const Whitening w = whitening(moments_of(values, kept), shift_mean, unbiased, eps);
  auto y = at::empty(x.sizes(), x.options().dtype(at::kFloat).memory_format(at::MemoryFormat::Contiguous));
  dispatch_storage(x.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    parallel_rows(x.numel(), kGrainTokens, [&](int64_t begin, int64_t end) {
      masked_whiten_apply<T>(data<T>(values), data<uint8_t>(kept), w, begin, end, y.data_ptr<float>());
    });
  });
  return y;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastrlhf, CPU, m) { m.impl("masked_whiten", &whiten_cpu); }

TORCH_LIBRARY_IMPL(fastrlhf, Autograd, m) { m.impl("masked_whiten", torch::CppFunction::makeFallthrough()); }

}  // namespace fastrlhf
