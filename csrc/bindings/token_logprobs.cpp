// fastrlhf::token_logprobs and its backward: the CPU kernels (cpu/token_logprobs.h) and the autograd
// that serves every device.
#include <ATen/TensorUtils.h>

#include <cfloat>

#include "bindings/common.h"
#include "cpu/token_logprobs.h"

namespace fastrlhf {
namespace {

constexpr int64_t kGrainElements = 1 << 16;  // logits per thread chunk, at least

// logits [..., V] as a [B, T, V] view with unit stride along V (any stride when V = 1), sharing
// storage where the leading dims allow it (logits[:, :-1] does), else a contiguous copy.
at::Tensor as_rows(const at::Tensor& logits) {
  const int64_t vocab = logits.size(-1);
  const at::Tensor t = vocab == 1 || logits.stride(-1) == 1 ? logits : logits.contiguous();
  if (t.dim() == 3) return t;
  const int64_t inner = t.dim() >= 2 ? t.size(-2) : 1;
  for (const int64_t rows_per_batch : {t.numel() / vocab, inner}) {  // [1, N, V], else [B, T, V]
    const std::vector<int64_t> sizes = {t.numel() / vocab / rows_per_batch, rows_per_batch, vocab};
    if (const auto strides = at::detail::computeStride(t.sizes(), t.strides(), sizes)) {
      return t.as_strided(sizes, *strides);
    }
  }
  return t.contiguous().view({1, -1, vocab});
}

void check_inputs(const at::Tensor& logits, const at::Tensor& labels, double temperature) {
  check_float(logits, "logits");
  TORCH_CHECK_VALUE(logits.dim() >= 1, "logits must be [..., V], got a 0-dim tensor");
  TORCH_CHECK_VALUE(labels.defined() && labels.device().is_cpu(), "labels must be a CPU tensor");
  TORCH_CHECK_TYPE(labels.scalar_type() == at::kLong, "labels must be int64 (the op converts other integers), got ",
                   labels.scalar_type());
  TORCH_CHECK_VALUE(labels.sizes() == logits.sizes().slice(0, logits.dim() - 1),
                    "labels must have shape logits.shape[:-1] = ", logits.sizes().slice(0, logits.dim() - 1), ", got ",
                    labels.sizes());
  TORCH_CHECK_VALUE(std::isfinite(temperature) && temperature > 0 && 1.0 / temperature <= FLT_MAX,
                    "temperature must be finite and > 0 with 1 / temperature finite in float32, got ", temperature);
}

// Every label is ignore_index or in [0, vocab): the kernels read logits[label] unchecked.
void check_labels(const at::Tensor& labels, int64_t vocab, int64_t ignore_index) {
  const int64_t* l = labels.data_ptr<int64_t>();
  for (int64_t i = 0, n = labels.numel(); i < n; ++i) {
    TORCH_CHECK_VALUE(l[i] == ignore_index || (l[i] >= 0 && l[i] < vocab), "labels must be in [0, ", vocab,
                      ") or ignore_index=", ignore_index, ", found ", l[i]);
  }
}

std::vector<int64_t> stats_shape(const at::Tensor& labels) {
  std::vector<int64_t> shape = labels.sizes().vec();
  shape.push_back(2);
  return shape;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> forward_cpu(const at::Tensor& logits, const at::Tensor& labels,
                                                       double temperature, int64_t ignore_index, bool with_entropy) {
  check_inputs(logits, labels, temperature);
  const int64_t n = labels.numel(), vocab = logits.size(-1);
  const at::Tensor rows = as_rows(logits), flat_labels = labels.contiguous();
  check_labels(flat_labels, vocab, ignore_index);
  const auto options = logits.options().dtype(at::kFloat);
  auto logprobs = at::empty(labels.sizes(), options), stats = at::empty(stats_shape(labels), options);
  auto entropy = with_entropy ? at::empty(labels.sizes(), options) : at::empty({0}, options);
  dispatch_storage(logits.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    const Rows<T> view{data<T>(rows), rows.size(1), rows.stride(0), rows.stride(1)};
    parallel_rows(n, kGrainElements / vocab, [&](int64_t begin, int64_t end) {
      token_logprobs_forward<T>(view, vocab, flat_labels.data_ptr<int64_t>(), float(1.0 / temperature), ignore_index,
                                begin, end, logprobs.data_ptr<float>(),
                                with_entropy ? entropy.data_ptr<float>() : nullptr,
                                reinterpret_cast<SoftmaxRow*>(stats.data_ptr<float>()));
    });
  });
  return {logprobs, entropy, stats};
}

at::Tensor backward_cpu(const at::Tensor& logits, const at::Tensor& labels, const at::Tensor& stats,
                    const at::Tensor& entropy, const std::optional<at::Tensor>& grad_logprobs,
                    const std::optional<at::Tensor>& grad_entropy, double temperature, int64_t ignore_index) {
  check_inputs(logits, labels, temperature);
  const int64_t n = labels.numel(), vocab = logits.size(-1);
  const at::Tensor rows = as_rows(logits), flat_labels = labels.contiguous();
  check_labels(flat_labels, vocab, ignore_index);
  const at::Tensor row_stats = float_of_shape(stats, "stats", stats_shape(labels));
  auto optional_float = [&](const std::optional<at::Tensor>& t, const char* name) {
    return t && t->defined() ? float_of_shape(*t, name, labels.sizes()) : at::Tensor();
  };
  const at::Tensor g_logprobs = optional_float(grad_logprobs, "grad_logprobs");
  const at::Tensor g_entropy = optional_float(grad_entropy, "grad_entropy");
  const at::Tensor h = g_entropy.defined() ? float_of_shape(entropy, "entropy", labels.sizes()) : at::Tensor();
  auto grad_logits = empty_large(logits.sizes(), logits.options().memory_format(at::MemoryFormat::Contiguous));
  dispatch_storage(logits.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    const Rows<T> view{data<T>(rows), rows.size(1), rows.stride(0), rows.stride(1)};
    parallel_rows(n, kGrainElements / vocab, [&](int64_t begin, int64_t end) {
      token_logprobs_backward<T>(view, vocab, flat_labels.data_ptr<int64_t>(),
                                 reinterpret_cast<const SoftmaxRow*>(row_stats.data_ptr<float>()),
                                 h.defined() ? h.data_ptr<float>() : nullptr,
                                 g_logprobs.defined() ? g_logprobs.data_ptr<float>() : nullptr,
                                 g_entropy.defined() ? g_entropy.data_ptr<float>() : nullptr, float(1.0 / temperature),
                                 ignore_index, begin, end, mutable_data<T>(grad_logits));
    });
  });
  return grad_logits;
}

using Outputs = std::tuple<at::Tensor, at::Tensor, at::Tensor>;

// The kernel for the inputs' device, below autograd.
Outputs device_kernel(const at::Tensor& logits, const at::Tensor& labels, double temperature, int64_t ignore_index,
                      bool with_entropy) {
  static const auto op = registered_op<decltype(forward_cpu)>("fastrlhf::token_logprobs");
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  return op.call(logits, labels, temperature, ignore_index, with_entropy);
}

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// Differentiable w.r.t. logits through logprobs and entropy; the backward op runs on the logits' device.
class TokenLogprobs : public torch::autograd::Function<TokenLogprobs> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& logits, const at::Tensor& labels,
                               double temperature, int64_t ignore_index, bool with_entropy) {
    auto [logprobs, entropy, stats] = device_kernel(logits, labels, temperature, ignore_index, with_entropy);
    ctx->save_for_backward({logits, labels, stats, entropy});
    ctx->saved_data["temperature"] = temperature;
    ctx->saved_data["ignore_index"] = ignore_index;
    ctx->mark_non_differentiable(with_entropy ? variable_list{stats} : variable_list{entropy, stats});
    ctx->set_materialize_grads(false);  // an unused output's gradient stays undefined: no work for it
    return {logprobs, entropy, stats};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto op = registered_op<decltype(backward_cpu)>("fastrlhf::token_logprobs_backward");
    const variable_list saved = ctx->get_saved_variables();
    at::Tensor grad;
    if (grads[0].defined() || grads[1].defined()) {
      auto given = [](const at::Tensor& g) { return g.defined() ? std::optional<at::Tensor>(g) : std::nullopt; };
      grad = op.call(saved[0], saved[1], saved[2], saved[3], given(grads[0]), given(grads[1]),
                     ctx->saved_data["temperature"].toDouble(), ctx->saved_data["ignore_index"].toInt());
    }
    return {grad, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

// Nothing to record (logits need no grad, or grad mode is off): the kernel alone, without a node.
Outputs forward_autograd(const at::Tensor& logits, const at::Tensor& labels, double temperature, int64_t ignore_index,
                         bool with_entropy) {
  if (!torch::autograd::compute_requires_grad(logits)) {
    return device_kernel(logits, labels, temperature, ignore_index, with_entropy);
  }
  auto outputs = TokenLogprobs::apply(logits, labels, temperature, ignore_index, with_entropy);
  return {outputs[0], outputs[1], outputs[2]};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastrlhf, CPU, m) {
  m.impl("token_logprobs", &forward_cpu);
  m.impl("token_logprobs_backward", &backward_cpu);
}

TORCH_LIBRARY_IMPL(fastrlhf, Autograd, m) { m.impl("token_logprobs", &forward_autograd); }

}  // namespace fastrlhf
