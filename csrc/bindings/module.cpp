// fastrlhf._C: the CPU kernels of every op (and CUDA kernels where Triton is the wrong tool).
#include "bindings/common.h"

namespace fastrlhf {
void bind_token_logprobs(pybind11::module_& m);
void bind_kl_penalty(pybind11::module_& m);
void bind_gae(pybind11::module_& m);
void bind_kl_shaped_rewards(pybind11::module_& m);
void bind_masked_reduction(pybind11::module_& m);
void bind_masked_mean(pybind11::module_& m);
void bind_masked_whiten(pybind11::module_& m);
void bind_ppo_policy_loss(pybind11::module_& m);
void bind_ppo_value_loss(pybind11::module_& m);
}  // namespace fastrlhf

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "fastrlhf CPU kernels; the contract is in kernels/__init__.py";
  fastrlhf::bind_token_logprobs(m);
  fastrlhf::bind_kl_penalty(m);
  fastrlhf::bind_gae(m);
  fastrlhf::bind_kl_shaped_rewards(m);
  fastrlhf::bind_masked_reduction(m);
  fastrlhf::bind_masked_mean(m);
  fastrlhf::bind_masked_whiten(m);
  fastrlhf::bind_ppo_policy_loss(m);
  fastrlhf::bind_ppo_value_loss(m);
}
