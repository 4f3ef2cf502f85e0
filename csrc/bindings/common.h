// Helpers for the bindings: they check tensors, pick the storage type and split rows across threads.
#pragma once

#include <torch/extension.h>

#include "cpu/numeric.h"

namespace fastrlhf {

// Calls f(T{}) with T the kernels' storage type for dtype.
template <typename F>
auto dispatch_storage(at::ScalarType dtype, F&& f) {
  switch (dtype) {
    case at::kFloat: return f(float{});
    case at::kBFloat16: return f(bf16{});
    case at::kHalf: return f(fp16{});
    default: TORCH_CHECK_TYPE(false, "expected float32, bfloat16 or float16, got ", dtype);
  }
}

template <typename T>
const T* data(const at::Tensor& t) { return reinterpret_cast<const T*>(t.data_ptr()); }
template <typename T>
T* mutable_data(at::Tensor& t) { return reinterpret_cast<T*>(t.data_ptr()); }

inline void check_cpu(const at::Tensor& t, const char* name) {
  TORCH_CHECK_VALUE(t.device().is_cpu(), name, " must be a CPU tensor, got one on ", t.device());
}

// A [B, T, V] tensor whose rows are contiguous, read through Rows<T>.
template <typename T>
Rows<T> rows_of(const at::Tensor& t, const char* name) {
  check_cpu(t, name);
  TORCH_CHECK_VALUE(t.dim() == 3 && t.stride(2) == 1, name, " must be a [B, T, V] view with a contiguous last dim");
  return Rows<T>{data<T>(t), t.size(1), t.stride(0), t.stride(1)};
}

// float32, contiguous, on CPU: the small per-token inputs are converted once here.
inline at::Tensor contiguous_float(const at::Tensor& t, const char* name) {
  check_cpu(t, name);
  return t.to(at::kFloat).contiguous();
}

// Runs fn(begin, end) over [0, n) on torch's thread pool, in chunks of about `grain` items.
template <typename F>
void parallel_rows(int64_t n, int64_t grain, const F& fn) {
  at::parallel_for(0, n, std::max<int64_t>(grain, 1), fn);
}

}  // namespace fastrlhf
