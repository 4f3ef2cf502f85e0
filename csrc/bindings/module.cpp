// fastrlhf._C: the CPU kernels of every op (and CUDA kernels where Triton is the wrong tool).
#include "bindings/common.h"

namespace fastrlhf {
void bind_token_logprobs(pybind11::module_& m);
void bind_masked_reduction(pybind11::module_& m);
void bind_masked_mean(pybind11::module_& m);
void bind_masked_whiten(pybind11::module_& m);
void bind_ppo_policy_loss(pybind11::module_& m);
void bind_ppo_value_loss(pybind11::module_& m);
}  // namespace fastrlhf

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "fastrlhf CPU kernels; see fastrlhf/ops/_reference_backend.py for the contract";
  fastrlhf::bind_token_logprobs(m);
  fastrlhf::bind_masked_reduction(m);
  fastrlhf::bind_masked_mean(m);
  fastrlhf::bind_masked_whiten(m);
  fastrlhf::bind_ppo_policy_loss(m);
  fastrlhf::bind_ppo_value_loss(m);
}
