#include "bindings/masked_reduction.h"

#include <vector>

namespace fastrlhf {

const uint8_t* mask_data(const at::Tensor& mask, const at::Tensor& like) {
  check_cpu(mask, "mask");
  TORCH_CHECK_VALUE(mask.scalar_type() == at::kBool && mask.is_contiguous() && mask.sizes() == like.sizes(),
                    "mask must be a contiguous bool tensor shaped like the input");
  return data<uint8_t>(mask);
}

void check_input(const at::Tensor& t, const char* name, const at::Tensor& like) {
  check_cpu(t, name);
  TORCH_CHECK_VALUE(t.is_contiguous() && t.sizes() == like.sizes() && t.scalar_type() == like.scalar_type(), name,
                    " must be contiguous, with the shape and dtype of the first input");
}

Reduction parse_reduction(const std::string& reduction) {
  if (reduction == "token_mean") return Reduction::kTokenMean;
  if (reduction == "seq_mean_token_mean") return Reduction::kSeqMeanTokenMean;
  TORCH_CHECK_VALUE(reduction == "seq_mean_token_sum", "unknown reduction ", reduction);
  return Reduction::kSeqMeanTokenSum;
}

Moments moments_of(const at::Tensor& x, const at::Tensor& mask) {
  check_input(x, "x", x);
  const uint8_t* m = mask_data(mask, x);
  const int64_t n = x.numel(), chunks = (n + kGrainTokens - 1) / kGrainTokens;
  std::vector<Moments> partials(chunks);
  dispatch_storage(x.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    parallel_rows(chunks, 1, [&](int64_t begin, int64_t end) {
      for (int64_t c = begin; c < end; ++c) {
        partials[c] = masked_moments<T>(data<T>(x), m, c * kGrainTokens, std::min(n, (c + 1) * kGrainTokens));
      }
    });
  });
  Moments total;
  for (const Moments& part : partials) total = merge(total, part);
  return total;
}

namespace {

at::Tensor loss_backward_tensor(const at::Tensor& grad_loss, const at::Tensor& token_grad, const at::Tensor& row_scale,
                                at::ScalarType dtype) {
  check_cpu(token_grad, "token_grad");
  TORCH_CHECK_VALUE(token_grad.dim() == 2 && token_grad.is_contiguous() && token_grad.scalar_type() == at::kFloat &&
                        row_scale.numel() == token_grad.size(0),
                    "token_grad must be contiguous float32 [R, T] with row_scale [R]");
  const int64_t rows = token_grad.size(0), tokens = token_grad.size(1);
  const float g = grad_loss.item<float>();  // a CPU scalar: no device sync
  auto row_scale_f = contiguous_float(row_scale, "row_scale");
  auto grad = at::empty({rows, tokens}, token_grad.options().dtype(dtype));
  dispatch_storage(dtype, [&](auto tag) {
    using T = decltype(tag);
    parallel_rows(rows, kGrainTokens / std::max<int64_t>(tokens, 1), [&](int64_t begin, int64_t end) {
      loss_backward<T>(g, token_grad.data_ptr<float>(), row_scale_f.data_ptr<float>(), tokens, begin, end,
                       mutable_data<T>(grad));
    });
  });
  return grad;
}

}  // namespace

void bind_masked_reduction(pybind11::module_& m) {
  m.def("ppo_loss_backward", &loss_backward_tensor, "grad_input = grad_loss * token_grad * row_scale[row]",
        pybind11::call_guard<pybind11::gil_scoped_release>());
}

}  // namespace fastrlhf
