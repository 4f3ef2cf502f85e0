#include "bindings/common.h"
#include "cpu/token_logprobs.h"

namespace fastrlhf {
namespace {

constexpr int64_t kGrainElements = 1 << 16;  // logits per thread chunk, at least

std::tuple<at::Tensor, at::Tensor, at::Tensor> forward(const at::Tensor& logits, const at::Tensor& labels,
                                                       double temperature, int64_t ignore_index, bool with_entropy) {
  const int64_t n = labels.numel(), vocab = logits.size(-1);
  check_cpu(labels, "labels");
  TORCH_CHECK_VALUE(labels.scalar_type() == at::kLong && labels.is_contiguous(), "labels must be contiguous int64");
  auto options = logits.options().dtype(at::kFloat);
  auto logprobs = at::empty({n}, options), lse = at::empty({n}, options);
  auto entropy = at::empty({with_entropy ? n : 0}, options);
  dispatch_storage(logits.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    auto rows = rows_of<T>(logits, "logits");
    TORCH_CHECK_VALUE(logits.size(0) * logits.size(1) == n, "logits has ", logits.size(0) * logits.size(1),
                      " rows but labels has ", n);
    parallel_rows(n, kGrainElements / vocab, [&](int64_t begin, int64_t end) {
      token_logprobs_forward<T>(rows, vocab, labels.data_ptr<int64_t>(), float(temperature), ignore_index, begin,
                                end, logprobs.data_ptr<float>(), with_entropy ? entropy.data_ptr<float>() : nullptr,
                                lse.data_ptr<float>());
    });
  });
  return {logprobs, entropy, lse};
}

at::Tensor backward(const at::Tensor& logits, const at::Tensor& labels, const at::Tensor& lse,
                    const at::Tensor& entropy, const std::optional<at::Tensor>& grad_logprobs,
                    const std::optional<at::Tensor>& grad_entropy, double temperature, int64_t ignore_index) {
  const int64_t n = labels.numel(), vocab = logits.size(-1);
  auto grad_logits = at::empty({n, vocab}, logits.options());
  auto optional_float = [](const std::optional<at::Tensor>& t, const char* name) {
    return t ? contiguous_float(*t, name) : at::Tensor();
  };
  auto g_logprobs = optional_float(grad_logprobs, "grad_logprobs");
  auto g_entropy = optional_float(grad_entropy, "grad_entropy");
  TORCH_CHECK_VALUE(!g_entropy.defined() || entropy.numel() == n, "grad_entropy given but no entropy was computed");
  dispatch_storage(logits.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    auto rows = rows_of<T>(logits, "logits");
    parallel_rows(n, kGrainElements / vocab, [&](int64_t begin, int64_t end) {
      token_logprobs_backward<T>(rows, vocab, labels.data_ptr<int64_t>(), lse.data_ptr<float>(),
                                 g_entropy.defined() ? entropy.data_ptr<float>() : nullptr,
                                 g_logprobs.defined() ? g_logprobs.data_ptr<float>() : nullptr,
                                 g_entropy.defined() ? g_entropy.data_ptr<float>() : nullptr, float(temperature),
                                 ignore_index, begin, end, mutable_data<T>(grad_logits));
    });
  });
  return grad_logits;
}

}  // namespace

void bind_token_logprobs(pybind11::module_& m) {
  m.def("token_logprobs_forward", &forward, "logprobs, entropy, lse of [B, T, V] logits",
        pybind11::call_guard<pybind11::gil_scoped_release>());
  m.def("token_logprobs_backward", &backward, "grad_logits of token_logprobs",
        pybind11::call_guard<pybind11::gil_scoped_release>());
}

}  // namespace fastrlhf
