#include "bindings/masked_reduction.h"
#include "cpu/masked_mean.h"

namespace fastrlhf {
namespace {

// x [outer, D, inner] -> (mean, inv_count) float32 [outer, inner]; see kernels/masked_mean.py.
std::tuple<at::Tensor, at::Tensor> forward(const at::Tensor& x, const at::Tensor& mask) {
  check_input(x, "x", x);
  TORCH_CHECK_VALUE(x.dim() == 3, "x must be a [outer, D, inner] view");
  const uint8_t* m = mask_data(mask, x);
  const int64_t outer = x.size(0), reduced = x.size(1), inner = x.size(2);
  auto mean = at::empty({outer, inner}, x.options().dtype(at::kFloat)), inv_count = at::empty_like(mean);
  if (outer * inner == 1) {  // everything: the moments, in parallel over chunks
    const Moments moments = moments_of(x, mask);
    mean.fill_(moments.mean);
    inv_count.fill_(1.0 / std::max(moments.count, 1.0));
    return {mean, inv_count};
  }
  dispatch_storage(x.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    parallel_rows(outer, kGrainTokens / std::max<int64_t>(reduced * inner, 1), [&](int64_t begin, int64_t end) {
      masked_mean_lines<T>(data<T>(x), m, reduced, inner, begin, end, mean.data_ptr<float>(),
                           inv_count.data_ptr<float>());
    });
  });
  return {mean, inv_count};
}

at::Tensor backward(const at::Tensor& grad, const at::Tensor& inv_count, const at::Tensor& mask, at::ScalarType dtype) {
  TORCH_CHECK_VALUE(mask.dim() == 3, "mask must be a [outer, D, inner] view");
  const int64_t outer = mask.size(0), reduced = mask.size(1), inner = mask.size(2);
  auto g = contiguous_float(grad, "grad"), inv = contiguous_float(inv_count, "inv_count");
  TORCH_CHECK_VALUE(g.numel() == outer * inner && inv.numel() == outer * inner, "grad and inv_count must be [outer, inner]");
  auto grad_x = at::empty(mask.sizes(), mask.options().dtype(dtype));
  const uint8_t* m = mask_data(mask, mask);
  dispatch_storage(dtype, [&](auto tag) {
    using T = decltype(tag);
    parallel_rows(outer * reduced, kGrainTokens / std::max<int64_t>(inner, 1), [&](int64_t begin, int64_t end) {
      masked_mean_backward<T>(g.data_ptr<float>(), inv.data_ptr<float>(), m, reduced, inner, begin, end,
                              mutable_data<T>(grad_x));
    });
  });
  return grad_x;
}

}  // namespace

void bind_masked_mean(pybind11::module_& m) {
  m.def("masked_mean_forward", &forward, "masked mean of [outer, D, inner] x along D",
        pybind11::call_guard<pybind11::gil_scoped_release>());
  m.def("masked_mean_backward", &backward, "grad_x of masked_mean", pybind11::call_guard<pybind11::gil_scoped_release>());
}

}  // namespace fastrlhf
