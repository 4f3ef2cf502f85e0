#include "bindings/masked_reduction.h"
#include "cpu/masked_whiten.h"

namespace fastrlhf {
namespace {

// x [N] -> y float32 [N]: the moments pass (parallel chunks, serial merge), then the normalise pass.
at::Tensor whiten(const at::Tensor& x, const at::Tensor& mask, bool shift_mean, bool unbiased, double eps) {
  const Whitening w = whitening(moments_of(x, mask), shift_mean, unbiased, eps);
  const uint8_t* m = mask_data(mask, x);
  auto y = at::empty(x.sizes(), x.options().dtype(at::kFloat));
  dispatch_storage(x.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    parallel_rows(x.numel(), kGrainTokens, [&](int64_t begin, int64_t end) {
      masked_whiten_apply<T>(data<T>(x), m, w, begin, end, y.data_ptr<float>());
    });
  });
  return y;
}

}  // namespace

void bind_masked_whiten(pybind11::module_& m) {
  m.def("masked_whiten", &whiten, "whiten x over its masked elements", pybind11::call_guard<pybind11::gil_scoped_release>());
}

}  // namespace fastrlhf
