// fastrlhf::linear_logprobs and its backward: the LM head's matmul and token_logprobs, one chunk of rows
// at a time, so that at most one [chunk, V] block of logits (and, in the backward, of their gradient)
// exists. The CPU kernels (ATen matmuls around cpu/token_logprobs.h) and the autograd for every device.
#include <algorithm>
#include <cfloat>

#include "bindings/common.h"
#include "cpu/token_logprobs.h"

namespace fastrlhf {
namespace {

constexpr int64_t kGrainElements = 1 << 16;  // logits per thread chunk, at least

struct Head {
  double logit_scale, softcap;  // softcap: inf for none
};

void check_inputs(const at::Tensor& hidden, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                  const at::Tensor& labels, double temperature, Head head, int64_t chunk_size) {
  check_float(hidden, "hidden");
  check_float(weight, "weight");
  TORCH_CHECK_VALUE(hidden.dim() >= 1, "hidden must be [..., H], got a 0-dim tensor");
  TORCH_CHECK_VALUE(weight.dim() == 2 && weight.size(1) == hidden.size(-1), "weight must be [V, H] with H = ",
                    hidden.size(-1), ", got shape ", weight.sizes());
  TORCH_CHECK_TYPE(weight.scalar_type() == hidden.scalar_type(), "weight has dtype ", weight.scalar_type(),
                   " but hidden has dtype ", hidden.scalar_type());
  if (bias && bias->defined()) {
    TORCH_CHECK_VALUE(bias->device().is_cpu() && bias->dim() == 1 && bias->size(0) == weight.size(0),
                      "bias must be a CPU tensor of shape [V] = [", weight.size(0), "], got ", bias->sizes());
    TORCH_CHECK_TYPE(bias->scalar_type() == hidden.scalar_type(), "bias has dtype ", bias->scalar_type(),
                     " but hidden has dtype ", hidden.scalar_type());
  }
  TORCH_CHECK_VALUE(labels.defined() && labels.device().is_cpu(), "labels must be a CPU tensor");
  TORCH_CHECK_TYPE(labels.scalar_type() == at::kLong, "labels must be int64, got ", labels.scalar_type());
  TORCH_CHECK_VALUE(labels.sizes() == hidden.sizes().slice(0, hidden.dim() - 1), "labels must have shape ",
                    "hidden.shape[:-1] = ", hidden.sizes().slice(0, hidden.dim() - 1), ", got ", labels.sizes());
  TORCH_CHECK_VALUE(std::isfinite(temperature) && temperature > 0 && 1.0 / temperature <= FLT_MAX,
                    "temperature must be finite and > 0 with 1 / temperature finite in float32, got ", temperature);
  TORCH_CHECK_VALUE(std::isfinite(head.logit_scale), "logit_scale must be finite, got ", head.logit_scale);
  TORCH_CHECK_VALUE(head.softcap > 0, "softcap must be > 0 (inf for none), got ", head.softcap);
  TORCH_CHECK_VALUE(chunk_size > 0, "chunk_size must be > 0, got ", chunk_size);
}

// Every label is ignore_index or in [0, vocab): the row kernels read logits[label] unchecked.
void check_labels(const at::Tensor& labels, int64_t vocab, int64_t ignore_index) {
  const int64_t* l = labels.data_ptr<int64_t>();
  for (int64_t i = 0, n = labels.numel(); i < n; ++i) {
    TORCH_CHECK_VALUE(l[i] == ignore_index || (l[i] >= 0 && l[i] < vocab), "labels must be in [0, ", vocab,
                      ") or ignore_index=", ignore_index, ", found ", l[i]);
  }
}

// Rows [begin, begin + rows) of h [N, H], with the rows whose label is ignore_index set to 0: they are
// never read (NaN there would reach the weight gradient through 0 * NaN). Undefined if all are ignored.
at::Tensor chunk_rows(const at::Tensor& h, const at::Tensor& labels, int64_t begin, int64_t rows,
                      int64_t ignore_index) {
  const int64_t* l = labels.data_ptr<int64_t>() + begin;
  const int64_t ignored = std::count(l, l + rows, ignore_index);
  if (ignored == rows) return at::Tensor();
  const at::Tensor hc = h.narrow(0, begin, rows);
  return ignored ? hc.masked_fill(labels.narrow(0, begin, rows).eq(ignore_index).unsqueeze(1), 0) : hc;
}

// The logits of rows h [c, H]: softcap(logit_scale * h @ weight.T + bias), [c, V] in the inputs' dtype,
// one rounding per step as in fastrlhf.reference.linear_logprobs.
at::Tensor chunk_logits(const at::Tensor& h, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                        Head head) {
  at::Tensor z = at::mm(h, weight.t());
  if (head.logit_scale != 1.0) z.mul_(head.logit_scale);
  if (bias && bias->defined()) z.add_(*bias);
  if (std::isfinite(head.softcap)) z.div_(head.softcap).tanh_().mul_(head.softcap);
  return z;
}

std::vector<int64_t> stats_shape(const at::Tensor& labels) {
  std::vector<int64_t> shape = labels.sizes().vec();
  shape.push_back(2);
  return shape;
}

template <typename T>
Rows<T> rows_of(const at::Tensor& z) {  // a contiguous [c, V] block
  return {data<T>(z), z.size(0), z.size(0) * z.size(1), z.size(1)};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> forward_cpu(const at::Tensor& hidden, const at::Tensor& weight,
                                                           const std::optional<at::Tensor>& bias,
                                                           const at::Tensor& labels, double temperature,
                                                           int64_t ignore_index, bool with_entropy,
                                                           double logit_scale, double softcap, int64_t chunk_size) {
  const Head head{logit_scale, softcap};
  check_inputs(hidden, weight, bias, labels, temperature, head, chunk_size);
  const int64_t n = labels.numel(), vocab = weight.size(0);
  const at::Tensor h = hidden.reshape({n, hidden.size(-1)}), flat_labels = labels.reshape({-1}).contiguous();
  check_labels(flat_labels, vocab, ignore_index);
  const auto options = hidden.options().dtype(at::kFloat);
  auto logprobs = at::zeros(labels.sizes(), options), stats = at::zeros(stats_shape(labels), options);
  auto entropy = with_entropy ? at::zeros(labels.sizes(), options) : at::empty({0}, options);
  const int64_t* l = flat_labels.data_ptr<int64_t>();
  for (int64_t begin = 0; begin < n; begin += chunk_size) {
    const int64_t rows = std::min(chunk_size, n - begin);
    const at::Tensor hc = chunk_rows(h, flat_labels, begin, rows, ignore_index);
    if (!hc.defined()) continue;  // all ignored: their outputs are 0
    const at::Tensor z = chunk_logits(hc, weight, bias, head);
    dispatch_storage(z.scalar_type(), [&](auto tag) {
      using T = decltype(tag);
      parallel_rows(rows, kGrainElements / vocab, [&](int64_t r0, int64_t r1) {
        token_logprobs_forward<T>(rows_of<T>(z), vocab, l + begin, float(1.0 / temperature), ignore_index, r0, r1,
                                  logprobs.data_ptr<float>() + begin,
                                  with_entropy ? entropy.data_ptr<float>() + begin : nullptr,
                                  reinterpret_cast<SoftmaxRow*>(stats.data_ptr<float>()) + begin);
      });
    });
  }
  return {logprobs, entropy, stats};
}

// grad_hidden, grad_weight, grad_bias (each [0] where output_mask says it is not needed). The
// weight and bias gradients are accumulated across chunks in float32 whatever the inputs' dtype.
std::tuple<at::Tensor, at::Tensor, at::Tensor> backward_cpu(
    const at::Tensor& hidden, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
    const at::Tensor& labels, const at::Tensor& stats, const at::Tensor& entropy,
    const std::optional<at::Tensor>& grad_logprobs, const std::optional<at::Tensor>& grad_entropy,
    double temperature, int64_t ignore_index, double logit_scale, double softcap, int64_t chunk_size,
    std::array<bool, 3> output_mask) {
  const Head head{logit_scale, softcap};
  check_inputs(hidden, weight, bias, labels, temperature, head, chunk_size);
  const int64_t n = labels.numel(), vocab = weight.size(0), width = hidden.size(-1);
  const at::Tensor h = hidden.reshape({n, width}), flat_labels = labels.reshape({-1}).contiguous();
  check_labels(flat_labels, vocab, ignore_index);
  const at::Tensor row_stats = float_of_shape(stats, "stats", stats_shape(labels));
  auto optional_float = [&](const std::optional<at::Tensor>& t, const char* name) {
    return t && t->defined() ? float_of_shape(*t, name, labels.sizes()) : at::Tensor();
  };
  const at::Tensor g_logprobs = optional_float(grad_logprobs, "grad_logprobs");
  const at::Tensor g_entropy = optional_float(grad_entropy, "grad_entropy");
  const at::Tensor ent = g_entropy.defined() ? float_of_shape(entropy, "entropy", labels.sizes()) : at::Tensor();
  const bool has_bias = bias && bias->defined();
  const auto f32 = hidden.options().dtype(at::kFloat);
  // Written, not zeroed first: rows of all-ignored chunks are zeroed where skipped, and the first chunk's
  // product initialises the weight gradient (beta = 0); a pass over [V, H] less.
  at::Tensor grad_hidden = output_mask[0] ? at::empty({n, width}, hidden.options()) : at::Tensor();
  at::Tensor grad_weight = output_mask[1] ? at::empty({vocab, width}, f32) : at::Tensor();
  bool weight_written = false;
  at::Tensor grad_bias = output_mask[2] && has_bias ? at::zeros({vocab}, f32) : at::Tensor();
  const int64_t* l = flat_labels.data_ptr<int64_t>();
  auto at_offset = [](const at::Tensor& t, int64_t begin) { return t.defined() ? t.data_ptr<float>() + begin : nullptr; };
  for (int64_t begin = 0; begin < n && (output_mask[0] || output_mask[1] || grad_bias.defined()); begin += chunk_size) {
    const int64_t rows = std::min(chunk_size, n - begin);
    const at::Tensor hc = chunk_rows(h, flat_labels, begin, rows, ignore_index);
    if (!hc.defined()) {  // all ignored: zero gradient
      if (output_mask[0]) grad_hidden.narrow(0, begin, rows).zero_();
      continue;
    }
    const at::Tensor z = chunk_logits(hc, weight, bias, head);
    at::Tensor grad_z = at::empty_like(z);
    dispatch_storage(z.scalar_type(), [&](auto tag) {
      using T = decltype(tag);
      parallel_rows(rows, kGrainElements / vocab, [&](int64_t r0, int64_t r1) {
        token_logprobs_backward<T>(rows_of<T>(z), vocab, l + begin,
                                   reinterpret_cast<const SoftmaxRow*>(row_stats.data_ptr<float>()) + begin,
                                   at_offset(ent, begin), at_offset(g_logprobs, begin), at_offset(g_entropy, begin),
                                   float(1.0 / temperature), ignore_index, r0, r1, mutable_data<T>(grad_z));
      });
    });
    // d softcap(x) / dx = 1 - tanh(x / softcap)^2 = 1 - (z / softcap)^2 (z is not needed after this)
    if (std::isfinite(softcap)) grad_z.mul_(z.div_(softcap).square_().neg_().add_(1.0));
    if (output_mask[0]) {
      at::Tensor rows_grad = grad_hidden.narrow(0, begin, rows);
      at::addmm_out(rows_grad, rows_grad, grad_z, weight, 0.0, logit_scale);
    }
    const at::Tensor grad_z32 = grad_z.to(at::kFloat);
    if (output_mask[1]) {
      at::addmm_out(grad_weight, grad_weight, grad_z32.t(), hc.to(at::kFloat), weight_written ? 1.0 : 0.0, logit_scale);
      weight_written = true;
    }
    if (grad_bias.defined()) grad_bias.add_(grad_z32.sum(0));
  }
  if (output_mask[1] && !weight_written) grad_weight.zero_();
  const at::ScalarType dtype = weight.scalar_type();
  const at::Tensor none = at::empty({0}, hidden.options());
  return {output_mask[0] ? grad_hidden.view(hidden.sizes()) : none, output_mask[1] ? grad_weight.to(dtype) : none,
          grad_bias.defined() ? grad_bias.to(dtype) : none};
}

using Outputs = std::tuple<at::Tensor, at::Tensor, at::Tensor>;

Outputs device_kernel(const at::Tensor& hidden, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                      const at::Tensor& labels, double temperature, int64_t ignore_index, bool with_entropy,
                      double logit_scale, double softcap, int64_t chunk_size) {
  static const auto op = registered_op<decltype(forward_cpu)>("fastrlhf::linear_logprobs");
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  return op.call(hidden, weight, bias, labels, temperature, ignore_index, with_entropy, logit_scale, softcap,
                 chunk_size);
}

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// Differentiable w.r.t. hidden, weight and bias through logprobs and entropy. Saves only the inputs and
// O(rows) statistics: the backward op recomputes each chunk's logits on the inputs' device.
class LinearLogprobs : public torch::autograd::Function<LinearLogprobs> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& hidden, const at::Tensor& weight,
                               const std::optional<at::Tensor>& bias, const at::Tensor& labels, double temperature,
                               int64_t ignore_index, bool with_entropy, double logit_scale, double softcap,
                               int64_t chunk_size) {
    auto [logprobs, entropy, stats] = device_kernel(hidden, weight, bias, labels, temperature, ignore_index,
                                                    with_entropy, logit_scale, softcap, chunk_size);
    ctx->save_for_backward({hidden, weight, bias ? *bias : at::Tensor(), labels, stats, entropy});
    ctx->saved_data["temperature"] = temperature;
    ctx->saved_data["ignore_index"] = ignore_index;
    ctx->saved_data["logit_scale"] = logit_scale;
    ctx->saved_data["softcap"] = softcap;
    ctx->saved_data["chunk_size"] = chunk_size;
    ctx->mark_non_differentiable(with_entropy ? variable_list{stats} : variable_list{entropy, stats});
    ctx->set_materialize_grads(false);
    return {logprobs, entropy, stats};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto op = registered_op<decltype(backward_cpu)>("fastrlhf::linear_logprobs_backward");
    const variable_list s = ctx->get_saved_variables();
    variable_list out(10);
    if (!grads[0].defined() && !grads[1].defined()) return out;
    auto given = [](const at::Tensor& g) { return g.defined() ? std::optional<at::Tensor>(g) : std::nullopt; };
    const std::array<bool, 3> mask = {ctx->needs_input_grad(0), ctx->needs_input_grad(1),
                                      s[2].defined() && ctx->needs_input_grad(2)};
    auto [grad_hidden, grad_weight, grad_bias] =
        op.call(s[0], s[1], given(s[2]), s[3], s[4], s[5], given(grads[0]), given(grads[1]),
                ctx->saved_data["temperature"].toDouble(), ctx->saved_data["ignore_index"].toInt(),
                ctx->saved_data["logit_scale"].toDouble(), ctx->saved_data["softcap"].toDouble(),
                ctx->saved_data["chunk_size"].toInt(), mask);
    out[0] = mask[0] ? grad_hidden : at::Tensor();
    out[1] = mask[1] ? grad_weight : at::Tensor();
    out[2] = mask[2] ? grad_bias : at::Tensor();
    return out;
  }
};

// Nothing to record (no input needs grad, or grad mode is off): the forward alone, nothing saved.
Outputs forward_autograd(const at::Tensor& hidden, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                         const at::Tensor& labels, double temperature, int64_t ignore_index, bool with_entropy,
                         double logit_scale, double softcap, int64_t chunk_size) {
  const at::Tensor b = bias ? *bias : at::Tensor();
  if (!torch::autograd::compute_requires_grad(hidden, weight, b)) {
    return device_kernel(hidden, weight, bias, labels, temperature, ignore_index, with_entropy, logit_scale, softcap,
                         chunk_size);
  }
  auto outputs = LinearLogprobs::apply(hidden, weight, bias, labels, temperature, ignore_index, with_entropy,
                                       logit_scale, softcap, chunk_size);
  return {outputs[0], outputs[1], outputs[2]};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastrlhf, CPU, m) {
  m.impl("linear_logprobs", &forward_cpu);
  m.impl("linear_logprobs_backward", &backward_cpu);
}

TORCH_LIBRARY_IMPL(fastrlhf, Autograd, m) { m.impl("linear_logprobs", &forward_autograd); }

}  // namespace fastrlhf
