// fastrlhf._C: the CPU kernels of every op (and CUDA kernels where Triton is the wrong tool).
#include "bindings/common.h"

namespace fastrlhf {
void bind_token_logprobs(pybind11::module_& m);
void bind_kl_penalty(pybind11::module_& m);
void bind_gae(pybind11::module_& m);
void bind_kl_shaped_rewards(pybind11::module_& m);
}  // namespace fastrlhf

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "fastrlhf CPU kernels; see fastrlhf/ops/_reference_backend.py for the contract";
  fastrlhf::bind_token_logprobs(m);
  fastrlhf::bind_kl_penalty(m);
  fastrlhf::bind_gae(m);
  fastrlhf::bind_kl_shaped_rewards(m);
}
