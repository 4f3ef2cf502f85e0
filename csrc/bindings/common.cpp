#include "bindings/common.h"

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

void check_mask(const at::Tensor& mask, const at::Tensor& like, const char* like_name) {
  TORCH_CHECK_VALUE(mask.defined() && mask.device().is_cpu(), "mask must be a CPU tensor");
  TORCH_CHECK_TYPE(mask.scalar_type() == at::kBool, "mask must be bool (the ops convert 0/1 numbers), got ",
                   mask.scalar_type());
  TORCH_CHECK_VALUE(mask.sizes() == like.sizes(), "mask has shape ", mask.sizes(), " but ", like_name, " has shape ",
                    like.sizes());
}

at::Tensor float_of_shape(const at::Tensor& t, const char* name, at::IntArrayRef shape) {
  TORCH_CHECK_VALUE(t.defined() && t.device().is_cpu(), name, " must be a CPU tensor");
  TORCH_CHECK_TYPE(at::isFloatingType(t.scalar_type()), name, " must be a float tensor, got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.sizes() == shape, name, " must have shape ", shape, ", got ", t.sizes());
  return t.to(at::kFloat).contiguous();
}

int64_t time_length(const at::Tensor& t, const char* name) {
  TORCH_CHECK_VALUE(t.dim() >= 1, name, " must have a time dimension [..., T], got a 0-dim tensor");
  return t.size(-1);
}

}  // namespace fastrlhf
