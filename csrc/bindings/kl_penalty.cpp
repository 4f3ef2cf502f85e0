#include "bindings/common.h"
#include "cpu/kl_penalty.h"

namespace fastrlhf {
namespace {

constexpr int64_t kGrainElements = 1 << 15;  // elements per thread chunk, at least

// logprobs and ref_logprobs: flat, contiguous, of one float dtype; estimator: a code of KlEstimator.
void check_inputs(const at::Tensor& logprobs, const at::Tensor& ref_logprobs, int64_t estimator) {
  TORCH_CHECK_VALUE(estimator >= kK1 && estimator <= kAbs, "estimator must be a code in [0, 3], got ", estimator);
  check_cpu(logprobs, "logprobs");
  check_cpu(ref_logprobs, "ref_logprobs");
  TORCH_CHECK_VALUE(logprobs.dim() == 1 && logprobs.is_contiguous(), "logprobs must be flat and contiguous");
  TORCH_CHECK_VALUE(ref_logprobs.sizes() == logprobs.sizes() && ref_logprobs.is_contiguous(),
                    "ref_logprobs must be contiguous with the shape of logprobs");
  TORCH_CHECK_TYPE(ref_logprobs.scalar_type() == logprobs.scalar_type(),
                   "ref_logprobs must have the dtype of logprobs");
}

at::Tensor forward(const at::Tensor& logprobs, const at::Tensor& ref_logprobs, int64_t estimator, double clamp) {
  check_inputs(logprobs, ref_logprobs, estimator);
  const int64_t n = logprobs.numel();
  auto kl = at::empty({n}, logprobs.options().dtype(at::kFloat));
  dispatch_storage(logprobs.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    parallel_rows(n, kGrainElements, [&](int64_t begin, int64_t end) {
      kl_penalty_forward<T>(data<T>(logprobs), data<T>(ref_logprobs), int(estimator), float(clamp), begin, end,
                            kl.data_ptr<float>());
    });
  });
  return kl;
}

std::tuple<at::Tensor, at::Tensor> backward(const at::Tensor& logprobs, const at::Tensor& ref_logprobs,
                                            const at::Tensor& grad_kl, int64_t estimator, double clamp,
                                            bool need_logprobs, bool need_ref) {
  check_inputs(logprobs, ref_logprobs, estimator);
  const int64_t n = logprobs.numel();
  auto grad = contiguous_float(grad_kl, "grad_kl");
  TORCH_CHECK_VALUE(grad.numel() == n, "grad_kl has ", grad.numel(), " elements but logprobs has ", n);
  auto grad_logprobs = at::empty({need_logprobs ? n : 0}, logprobs.options());
  auto grad_ref = at::empty({need_ref ? n : 0}, ref_logprobs.options());
  dispatch_storage(logprobs.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    parallel_rows(n, kGrainElements, [&](int64_t begin, int64_t end) {
      kl_penalty_backward<T>(data<T>(logprobs), data<T>(ref_logprobs), grad.data_ptr<float>(), int(estimator),
                             float(clamp), begin, end, need_logprobs ? mutable_data<T>(grad_logprobs) : nullptr,
                             need_ref ? mutable_data<T>(grad_ref) : nullptr);
    });
  });
  return {grad_logprobs, grad_ref};
}

}  // namespace

void bind_kl_penalty(pybind11::module_& m) {
  m.def("kl_penalty_forward", &forward, "per-token KL estimate of flat log-probabilities",
        pybind11::call_guard<pybind11::gil_scoped_release>());
  m.def("kl_penalty_backward", &backward, "(grad_logprobs, grad_ref_logprobs) of kl_penalty",
        pybind11::call_guard<pybind11::gil_scoped_release>());
}

}  // namespace fastrlhf
