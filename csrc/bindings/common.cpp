#include "bindings/common.h"

#include <atomic>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace fastrlhf {

void check_float(const at::Tensor& t, const char* name) {
  TORCH_CHECK_VALUE(t.defined() && t.device().is_cpu(), name, " must be a CPU tensor");
  TORCH_CHECK_TYPE(t.scalar_type() == at::kFloat || t.scalar_type() == at::kBFloat16 || t.scalar_type() == at::kHalf,
                   name, " must be float32, bfloat16 or float16, got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.numel() > 0, name, " is empty (shape ", t.sizes(), ")");
}

void check_like(const at::Tensor& t, const char* name, const at::Tensor& like, const char* like_name) {
  TORCH_CHECK_VALUE(t.defined() && t.device().is_cpu(), name, " must be a CPU tensor");
  TORCH_CHECK_VALUE(t.sizes() == like.sizes(), name, " has shape ", t.sizes(), " but ", like_name, " has shape ",
                    like.sizes());
  TORCH_CHECK_TYPE(t.scalar_type() == like.scalar_type(), name, " has dtype ", t.scalar_type(), " but ", like_name,
                   " has dtype ", like.scalar_type());
}

namespace {

// out[i] = m[i] != 0 as bytes (GCC vectorises no bool stores); whether every m[i] was 0 or 1.
template <typename T>
bool nonzero_bytes(const T* m, int64_t begin, int64_t end, uint8_t* out) {
  uint8_t other = 0;
#pragma omp simd reduction(| : other)
  for (int64_t i = begin; i < end; ++i) {
    const uint8_t nonzero = m[i] != T(0);
    out[i] = nonzero;
    other |= nonzero & uint8_t(m[i] != T(1));
  }
  return !other;
}

}  // namespace

namespace {

void check_mask(const at::Tensor& mask, const at::Tensor& like, const char* like_name) {
  TORCH_CHECK_VALUE(mask.defined() && mask.device().is_cpu(), "mask must be a CPU tensor");
  TORCH_CHECK_VALUE(mask.sizes() == like.sizes(), "mask has shape ", mask.sizes(), " but ", like_name, " has shape ",
                    like.sizes());
  TORCH_CHECK_TYPE(!at::isComplexType(mask.scalar_type()), "mask must be bool or 0/1 numbers, got ",
                   mask.scalar_type());
}

}  // namespace

void check_binary(bool binary, const at::Tensor& mask) {
  if (binary) return;
  const at::Tensor wrong = mask.masked_select((mask != 0) & (mask != 1));
  TORCH_CHECK_VALUE(false, "mask must be bool or hold only 0 and 1, found ", wrong[0].item<double>());
}

at::Tensor kept_mask(const at::Tensor& mask, const at::Tensor& like, const char* like_name) {
  check_mask(mask, like, like_name);
  if (mask.scalar_type() == at::kBool) return mask.contiguous();
  const at::Tensor numbers = mask.contiguous();
  auto kept = at::empty(mask.sizes(), mask.options().dtype(at::kBool));
  std::atomic<bool> binary{true};
  AT_DISPATCH_ALL_TYPES_AND2(at::kHalf, at::kBFloat16, numbers.scalar_type(), "kept_mask", [&] {
    const scalar_t* m = numbers.data_ptr<scalar_t>();
    uint8_t* out = reinterpret_cast<uint8_t*>(kept.data_ptr<bool>());
    parallel_rows(numbers.numel(), 1 << 16, [&](int64_t begin, int64_t end) {
      if (!nonzero_bytes(m, begin, end, out)) binary = false;
    });
  });
  check_binary(binary, numbers);
  return kept;
}

at::Tensor readable_mask(const at::Tensor& mask, const at::Tensor& like, const char* like_name) {
  check_mask(mask, like, like_name);
  const bool as_is = mask.scalar_type() == at::kBool || mask.scalar_type() == at::kFloat;
  return as_is ? mask.contiguous() : kept_mask(mask, like, like_name);
}

at::Tensor float_of_shape(const at::Tensor& t, const char* name, at::IntArrayRef shape) {
  TORCH_CHECK_VALUE(t.defined() && t.device().is_cpu(), name, " must be a CPU tensor");
  TORCH_CHECK_TYPE(at::isFloatingType(t.scalar_type()), name, " must be a float tensor, got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.sizes() == shape, name, " must have shape ", shape, ", got ", t.sizes());
  return t.to(at::kFloat).contiguous();
}

at::Tensor empty_large(at::IntArrayRef sizes, const at::TensorOptions& options) {
  at::Tensor t = at::empty(sizes, options);
#if defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHugePage = uintptr_t(2) << 20;
  const uintptr_t start = reinterpret_cast<uintptr_t>(t.data_ptr()), stop = start + t.nbytes();
  const uintptr_t begin = (start + kHugePage - 1) & ~(kHugePage - 1), end = stop & ~(kHugePage - 1);
  if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);  // a hint: failure is fine
#endif
  return t;
}

int64_t time_length(const at::Tensor& t, const char* name) {
  TORCH_CHECK_VALUE(t.dim() >= 1, name, " must have a time dimension [..., T], got a 0-dim tensor");
  return t.size(-1);
}

}  // namespace fastrlhf
