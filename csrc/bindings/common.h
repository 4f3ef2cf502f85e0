// Helpers for the registered ops' CPU kernels and autograd: contract checks that name the argument at
// fault, the storage type of a dtype, and rows split across torch's thread pool.
#pragma once

#include <torch/csrc/autograd/functions/utils.h>
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

// A float32, bfloat16 or float16 CPU tensor with at least one element.
void check_float(const at::Tensor& t, const char* name);

// t has the shape and dtype of `like` (a tensor checked by check_float).
void check_like(const at::Tensor& t, const char* name, const at::Tensor& like, const char* like_name);

// The mask, shaped like `like`, as the kernels read it: contiguous bool. A mask of numbers is converted
// in one pass that also checks it holds only 0 and 1 (a 0.5 would be read as "kept", not as a weight).
at::Tensor kept_mask(const at::Tensor& mask, const at::Tensor& like, const char* like_name);

// The mask, shaped like `like`, for kernels that read bool and float32 masks as they are (contiguous) and
// check the values themselves (check_binary): no conversion pass. Other dtypes go through kept_mask.
at::Tensor readable_mask(const at::Tensor& mask, const at::Tensor& like, const char* like_name);

// Calls f(p) with p the data of a readable_mask: const uint8_t* (bool) or const float*.
template <typename F>
auto dispatch_mask(const at::Tensor& mask, F&& f) {
  return mask.scalar_type() == at::kFloat ? f(data<float>(mask)) : f(data<uint8_t>(mask));
}

// The error for a mask holding values other than 0 and 1, unless `binary` (what the kernel found).
void check_binary(bool binary, const at::Tensor& mask);

// A float CPU tensor of `shape` (gradients and saved statistics), converted to contiguous float32.
at::Tensor float_of_shape(const at::Tensor& t, const char* name, at::IntArrayRef shape);

// at::empty for a large output written once in full (token_logprobs' gradient of the logits): on Linux
// its fresh pages are asked for as transparent huge pages, so the first writes fault once per 2 MB
// rather than once per 4 KB (page faults were half the time of a 262 MB gradient).
at::Tensor empty_large(at::IntArrayRef sizes, const at::TensorOptions& options);

// The size of the last (time) dim of a tensor with at least one dim.
int64_t time_length(const at::Tensor& t, const char* name);

// Runs fn(begin, end) over [0, n) on torch's thread pool, in chunks of about `grain` items. Small
// inputs (n <= grain) run inline on the calling thread: no pool wake-up.
template <typename F>
void parallel_rows(int64_t n, int64_t grain, const F& fn) {
  at::parallel_for(0, n, std::max<int64_t>(grain, 1), fn);
}

// The registered op fastrlhf::name, called through the dispatcher (so that each device runs its own
// kernel: the C++ one on CPU, the Triton one on CUDA).
template <typename Signature>
c10::TypedOperatorHandle<Signature> registered_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

}  // namespace fastrlhf
