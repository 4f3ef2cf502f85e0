// fastrlhf::kl_penalty and its backward: the CPU kernels (cpu/kl_penalty.h) and the autograd that
// serves every device.
#include "bindings/common.h"
#include "cpu/kl_penalty.h"

namespace fastrlhf {
namespace {

constexpr int64_t kGrainElements = 1 << 15;  // elements per thread chunk, at least

void check_inputs(const at::Tensor& logprobs, const at::Tensor& ref_logprobs, int64_t estimator, double clamp) {
  check_float(logprobs, "logprobs");
  check_like(ref_logprobs, "ref_logprobs", logprobs, "logprobs");
  TORCH_CHECK_VALUE(estimator >= kK1 && estimator <= kAbs, "estimator must be a code in [0, 3], got ", estimator);
  TORCH_CHECK_VALUE(clamp > 0, "clamp must be > 0 (inf: none), got ", clamp);
}

at::Tensor forward_cpu(const at::Tensor& logprobs, const at::Tensor& ref_logprobs, int64_t estimator, double clamp) {
  check_inputs(logprobs, ref_logprobs, estimator, clamp);
  const at::Tensor x = logprobs.contiguous(), ref = ref_logprobs.contiguous();
  auto kl = at::empty(logprobs.sizes(), logprobs.options().dtype(at::kFloat));
  dispatch_storage(logprobs.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    parallel_rows(x.numel(), kGrainElements, [&](int64_t begin, int64_t end) {
      kl_penalty_forward<T>(data<T>(x), data<T>(ref), int(estimator), float(clamp), begin, end, kl.data_ptr<float>());
    });
  });
  return kl;
}

std::tuple<at::Tensor, at::Tensor> backward_cpu(const at::Tensor& logprobs, const at::Tensor& ref_logprobs,
                                                const at::Tensor& grad_kl, int64_t estimator, double clamp,
                                                bool need_logprobs, bool need_ref) {
  check_inputs(logprobs, ref_logprobs, estimator, clamp);
  const at::Tensor x = logprobs.contiguous(), ref = ref_logprobs.contiguous();
  const at::Tensor grad = float_of_shape(grad_kl, "grad_kl", logprobs.sizes());
  const auto options = logprobs.options().memory_format(at::MemoryFormat::Contiguous);
  auto grad_logprobs = need_logprobs ? at::empty(logprobs.sizes(), options) : at::empty({0}, options);
  auto grad_ref = need_ref ? at::empty(logprobs.sizes(), options) : at::empty({0}, options);
  dispatch_storage(logprobs.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    parallel_rows(x.numel(), kGrainElements, [&](int64_t begin, int64_t end) {
      kl_penalty_backward<T>(data<T>(x), data<T>(ref), grad.data_ptr<float>(), int(estimator), float(clamp), begin,
                             end, need_logprobs ? mutable_data<T>(grad_logprobs) : nullptr,
                             need_ref ? mutable_data<T>(grad_ref) : nullptr);
    });
  });
  return {grad_logprobs, grad_ref};
}

// The kernel for the inputs' device, below autograd.
at::Tensor device_kernel(const at::Tensor& logprobs, const at::Tensor& ref_logprobs, int64_t estimator, double clamp) {
  static const auto op = registered_op<decltype(forward_cpu)>("fastrlhf::kl_penalty");
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  return op.call(logprobs, ref_logprobs, estimator, clamp);
}

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// Differentiable w.r.t. both inputs; the backward writes only the gradients autograd needs.
class KlPenalty : public torch::autograd::Function<KlPenalty> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& logprobs, const at::Tensor& ref_logprobs,
                            int64_t estimator, double clamp) {
    ctx->save_for_backward({logprobs, ref_logprobs});
    ctx->saved_data["estimator"] = estimator;
    ctx->saved_data["clamp"] = clamp;
    return device_kernel(logprobs, ref_logprobs, estimator, clamp);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto op = registered_op<decltype(backward_cpu)>("fastrlhf::kl_penalty_backward");
    const variable_list saved = ctx->get_saved_variables();
    const bool need_logprobs = ctx->needs_input_grad(0), need_ref = ctx->needs_input_grad(1);
    auto [grad_logprobs, grad_ref] = op.call(saved[0], saved[1], grads[0], ctx->saved_data["estimator"].toInt(),
                                             ctx->saved_data["clamp"].toDouble(), need_logprobs, need_ref);
    return {need_logprobs ? grad_logprobs : at::Tensor(), need_ref ? grad_ref : at::Tensor(), at::Tensor(),
            at::Tensor()};
  }
};

// Nothing to record (no input requires grad, or grad mode is off): the kernel alone, without a node.
at::Tensor forward_autograd(const at::Tensor& logprobs, const at::Tensor& ref_logprobs, int64_t estimator,
                            double clamp) {
  if (!torch::autograd::compute_requires_grad(logprobs, ref_logprobs)) {
    return device_kernel(logprobs, ref_logprobs, estimator, clamp);
  }
  return KlPenalty::apply(logprobs, ref_logprobs, estimator, clamp);
}

}  // namespace

TORCH_LIBRARY_IMPL(fastrlhf, CPU, m) {
  m.impl("kl_penalty", &forward_cpu);
  m.impl("kl_penalty_backward", &backward_cpu);
}

TORCH_LIBRARY_IMPL(fastrlhf, Autograd, m) { m.impl("kl_penalty", &forward_autograd); }

}  // namespace fastrlhf
