// fastrlhf::masked_mean and its backward: the CPU kernels (cpu/masked_mean.h) and the autograd that
// serves every device.
#include <atomic>

#include "bindings/masked_reduction.h"
#include "cpu/masked_mean.h"

namespace fastrlhf {
namespace {

// x viewed as [outer, D, inner] with D the reduced dim (everything: [1, N, 1]), and the mean's shape.
struct Lines {
  int64_t outer, reduced, inner;
  std::vector<int64_t> mean_shape;
};

Lines lines_of(at::IntArrayRef sizes, std::optional<int64_t> dim) {
  const int64_t numel = c10::multiply_integers(sizes);
  if (!dim || sizes.empty()) return {1, numel, 1, {}};
  const int64_t d = at::maybe_wrap_dim(*dim, int64_t(sizes.size()));
  std::vector<int64_t> mean_shape = sizes.vec();
  mean_shape.erase(mean_shape.begin() + d);
  const int64_t outer = c10::multiply_integers(sizes.slice(0, d));
  return {outer, sizes[d], numel / (outer * std::max<int64_t>(sizes[d], 1)), mean_shape};
}

std::tuple<at::Tensor, at::Tensor> forward_cpu(const at::Tensor& x, const at::Tensor& mask,
                                               std::optional<int64_t> dim) {
  check_float(x, "x");
  const Lines lines = lines_of(x.sizes(), dim);
  const at::Tensor values = x.contiguous(), kept = readable_mask(mask, x, "x");
  const auto options = x.options().dtype(at::kFloat).memory_format(at::MemoryFormat::Contiguous);
  auto mean = at::empty(lines.mean_shape, options), inv_count = at::empty(lines.mean_shape, options);
  std::atomic<bool> binary{true};
  dispatch_storage(x.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    dispatch_mask(kept, [&](const auto* m) {
      if (lines.outer * lines.inner == 1) {  // everything: chunks in parallel, their sums added in order
        const int64_t n = lines.reduced, chunks = (n + kGrainTokens - 1) / kGrainTokens;
        std::vector<MaskedSum> partials(chunks);
        parallel_rows(chunks, 1, [&](int64_t begin, int64_t end) {
          for (int64_t c = begin; c < end; ++c) {
            partials[c] = masked_sum(data<T>(values), m, c * kGrainTokens, std::min(n, (c + 1) * kGrainTokens));
          }
        });
        MaskedSum total;
        for (const MaskedSum& part : partials) {
          total.count += part.count, total.sum += part.sum, total.binary &= part.binary;
        }
        *mean.data_ptr<float>() = float(total.sum / std::max(total.count, 1.0));
        *inv_count.data_ptr<float>() = float(1.0 / std::max(total.count, 1.0));
        binary = total.binary;
        return;
      }
      parallel_rows(lines.outer, kGrainTokens / (lines.reduced * lines.inner), [&](int64_t begin, int64_t end) {
        if (!masked_mean_lines(data<T>(values), m, lines.reduced, lines.inner, begin, end, mean.data_ptr<float>(),
                               inv_count.data_ptr<float>())) {
          binary = false;
        }
      });
    });
  });
  check_binary(binary, kept);
  return {mean, inv_count};
}

at::Tensor backward_cpu(const at::Tensor& grad, const at::Tensor& inv_count, const at::Tensor& mask,
                        std::optional<int64_t> dim, at::ScalarType dtype) {
  TORCH_CHECK_VALUE(mask.numel() > 0, "mask is empty");
  const Lines lines = lines_of(mask.sizes(), dim);
  const at::Tensor g = float_of_shape(grad, "grad", lines.mean_shape);
  const at::Tensor inv = float_of_shape(inv_count, "inv_count", lines.mean_shape);
  const at::Tensor kept = readable_mask(mask, mask, "mask");
  auto grad_x = at::empty(mask.sizes(), mask.options().dtype(dtype).memory_format(at::MemoryFormat::Contiguous));
  std::atomic<bool> binary{true};
  dispatch_storage(dtype, [&](auto tag) {
    using T = decltype(tag);
    dispatch_mask(kept, [&](const auto* m) {
      parallel_rows(lines.outer * lines.reduced, kGrainTokens / lines.inner, [&](int64_t begin, int64_t end) {
        if (!masked_mean_backward(g.data_ptr<float>(), inv.data_ptr<float>(), m, lines.reduced, lines.inner, begin,
                                  end, mutable_data<T>(grad_x))) {
          binary = false;
        }
      });
    });
  });
  check_binary(binary, kept);
  return grad_x;
}

// The kernel for the inputs' device, below autograd.
std::tuple<at::Tensor, at::Tensor> device_kernel(const at::Tensor& x, const at::Tensor& mask,
                                                 std::optional<int64_t> dim) {
  static const auto op = registered_op<decltype(forward_cpu)>("fastrlhf::masked_mean");
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  return op.call(x, mask, dim);
}

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

class MaskedMean : public torch::autograd::Function<MaskedMean> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& mask,
                               std::optional<int64_t> dim) {
    auto [mean, inv_count] = device_kernel(x, mask, dim);
    ctx->save_for_backward({inv_count, mask});
    ctx->saved_data["dim"] = dim;
    ctx->saved_data["dtype"] = x.scalar_type();
    ctx->mark_non_differentiable({inv_count});
    ctx->set_materialize_grads(false);
    return {mean, inv_count};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto op = registered_op<decltype(backward_cpu)>("fastrlhf::masked_mean_backward");
    at::Tensor grad_x;
    if (grads[0].defined()) {
      const variable_list saved = ctx->get_saved_variables();
      grad_x = op.call(grads[0], saved[0], saved[1], ctx->saved_data["dim"].toOptional<int64_t>(),
                       ctx->saved_data["dtype"].toScalarType());
    }
    return {grad_x, at::Tensor(), at::Tensor()};
  }
};

// Nothing to record (x needs no grad, or grad mode is off): the kernel alone, without a node.
std::tuple<at::Tensor, at::Tensor> forward_autograd(const at::Tensor& x, const at::Tensor& mask,
                                                    std::optional<int64_t> dim) {
  if (!torch::autograd::compute_requires_grad(x)) return device_kernel(x, mask, dim);
  auto outputs = MaskedMean::apply(x, mask, dim);
  return {outputs[0], outputs[1]};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastrlhf, CPU, m) {
  m.impl("masked_mean", &forward_cpu);
  m.impl("masked_mean_backward", &backward_cpu);
}

TORCH_LIBRARY_IMPL(fastrlhf, Autograd, m) { m.impl("masked_mean", &forward_autograd); }

}  // namespace fastrlhf
