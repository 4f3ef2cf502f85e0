// fastrlhf._C: every op's schema (below), its CPU kernels and its autograd (csrc/bindings/<op>.cpp).
// Importing the module registers them as torch.ops.fastrlhf.<op>; fastrlhf/ops registers the Triton
// kernels for CUDA and the fake kernels for torch.compile. Each schema takes the op's tensors in their
// natural shapes and strides (the kernels make them contiguous), float tensors of one dtype, masks as
// bool, labels as int64, string options as integer codes (fastrlhf/codes.py) and "none" as inf.
#include "bindings/common.h"

TORCH_LIBRARY(fastrlhf, m) {
  const std::vector<at::Tag> tags = {at::Tag::pt2_compliant_tag};
  // logits [..., V], labels [...] -> logprobs [...], entropy [...] (or [0] without it), stats [..., 2]
  // (per row: the max logit and the log of the shifted exp sum, what the backward needs).
  m.def("token_logprobs(Tensor logits, Tensor labels, float temperature, int ignore_index, bool with_entropy)"
        " -> (Tensor logprobs, Tensor entropy, Tensor stats)", tags);
  m.def("token_logprobs_backward(Tensor logits, Tensor labels, Tensor stats, Tensor entropy, Tensor? grad_logprobs,"
        " Tensor? grad_entropy, float temperature, int ignore_index) -> Tensor", tags);
  // hidden [..., H], weight [V, H], bias [V] -> token_logprobs' outputs for the logits
  // softcap(logit_scale * hidden @ weight.T + bias), made chunk_size rows at a time; softcap: inf for none.
  // The backward returns [0] for a gradient output_mask does not ask for.
  m.def("linear_logprobs(Tensor hidden, Tensor weight, Tensor? bias, Tensor labels, float temperature,"
        " int ignore_index, bool with_entropy, float logit_scale, float softcap, int chunk_size)"
        " -> (Tensor logprobs, Tensor entropy, Tensor stats)", tags);
  m.def("linear_logprobs_backward(Tensor hidden, Tensor weight, Tensor? bias, Tensor labels, Tensor stats,"
        " Tensor entropy, Tensor? grad_logprobs, Tensor? grad_entropy, float temperature, int ignore_index,"
        " float logit_scale, float softcap, int chunk_size, bool[3] output_mask)"
        " -> (Tensor grad_hidden, Tensor grad_weight, Tensor grad_bias)", tags);
  // estimator: a code of KL_ESTIMATORS; clamp: inf for none. The backward skips an unneeded gradient ([0]).
  m.def("kl_penalty(Tensor logprobs, Tensor ref_logprobs, int estimator, float clamp) -> Tensor", tags);
  m.def("kl_penalty_backward(Tensor logprobs, Tensor ref_logprobs, Tensor grad_kl, int estimator, float clamp,"
        " bool need_logprobs, bool need_ref) -> (Tensor grad_logprobs, Tensor grad_ref_logprobs)", tags);
  // No gradient.
  m.def("gae(Tensor rewards, Tensor values, Tensor mask, float gamma, float lam) -> (Tensor advantages,"
        " Tensor returns)", tags);
  // scores [...], kl and mask [..., T]; score_clip: inf for none. No gradient.
  m.def("kl_shaped_rewards(Tensor scores, Tensor kl, Tensor mask, float kl_coef, float score_clip) -> Tensor", tags);
  // dim: None reduces everything; inv_count = 1 / max(count, 1) is what the backward needs.
  m.def("masked_mean(Tensor x, Tensor mask, int? dim) -> (Tensor mean, Tensor inv_count)", tags);
  m.def("masked_mean_backward(Tensor grad, Tensor inv_count, Tensor mask, int? dim, ScalarType dtype) -> Tensor", tags);
  // No gradient.
  m.def("masked_whiten(Tensor x, Tensor mask, bool shift_mean, bool unbiased, float eps) -> Tensor", tags);
  // The losses over [..., T] tokens: (loss, stats, token_grad, row_scale); the backward of both is
  // grad_input = grad_loss * token_grad * row_scale[row] (kernels/_masked_reduction.py). dual_clip and
  // clip_eps: inf for none; reduction: a code of REDUCTIONS.
  m.def("ppo_policy_loss(Tensor logprobs, Tensor old_logprobs, Tensor advantages, Tensor mask, float clip_eps,"
        " float clip_eps_high, float dual_clip, int reduction) -> (Tensor loss, Tensor stats, Tensor token_grad,"
        " Tensor row_scale)", tags);
  m.def("ppo_value_loss(Tensor values, Tensor old_values, Tensor returns, Tensor mask, float clip_eps,"
        " int reduction) -> (Tensor loss, Tensor stats, Tensor token_grad, Tensor row_scale)", tags);
  m.def("ppo_loss_backward(Tensor grad_loss, Tensor token_grad, Tensor row_scale, ScalarType dtype) -> Tensor", tags);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "fastrlhf's registered ops (torch.ops.fastrlhf): schemas, CPU kernels, autograd";
}
