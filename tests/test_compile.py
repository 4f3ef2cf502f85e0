"""Every op inside torch.compile(fullgraph=True): traced through its torch.library registration, no
graph break, same values and gradients as eager."""
import torch

from fastrlhf import ops


def policy_step(logits, labels, old_logprobs, ref_logprobs, values, old_values, scores, mask):
    """A PPO step's math, every op once (a small trainer in one function)."""
    logprobs, entropy = ops.token_logprobs(logits[:, :-1], labels, temperature=0.9, return_entropy=True)
    kl = ops.kl_penalty(logprobs.detach(), ref_logprobs, estimator="k3", clamp=10.0)
    rewards = ops.kl_shaped_rewards(scores, kl, mask, kl_coef=0.05)
    advantages, returns = ops.gae(rewards, values.detach(), mask, gamma=1.0, lam=0.95)
    advantages = ops.masked_whiten(advantages, mask)
    policy_loss, stats = ops.ppo_policy_loss(logprobs, old_logprobs, advantages, mask, dual_clip=3.0)
    value_loss, _ = ops.ppo_value_loss(values, old_values, returns, mask, reduction="seq_mean_token_mean")
    kl_to_ref = ops.kl_penalty(logprobs, ref_logprobs).mul(mask).sum() / mask.sum()
    loss = policy_loss + 0.1 * value_loss - 0.01 * ops.masked_mean(entropy, mask) + 0.01 * kl_to_ref
    return loss, stats["clip_frac"], ops.masked_mean(advantages, mask, dim=-1)


def inputs():
    B, T, V = 3, 6, 37
    mask = torch.arange(T) < torch.tensor([[6], [3], [1]])  # right padding, one row of a single token
    return dict(logits=torch.randn(B, T + 1, V), labels=torch.randint(0, V, (B, T)),
                old_logprobs=-torch.rand(B, T) * 3, ref_logprobs=-torch.rand(B, T) * 3,
                values=torch.randn(B, T), old_values=torch.randn(B, T), scores=torch.randn(B), mask=mask)


def run(fn, tensors, device):
    tensors = {k: v.to(device) for k, v in tensors.items()}
    leaves = [tensors[k].requires_grad_() for k in ("logits", "values")]
    loss, clip_frac, per_row = fn(**tensors)
    grads = torch.autograd.grad(loss, leaves)
    return [loss, clip_frac, per_row, *grads]


def test_compiled_step_matches_eager(backend):
    torch._dynamo.reset()
    tensors = inputs()
    compiled = torch.compile(policy_step, fullgraph=True, backend="aot_eager")
    eager = run(policy_step, tensors, backend.device)
    got = run(compiled, tensors, backend.device)
    for g, e in zip(got, eager):
        torch.testing.assert_close(g, e, atol=1e-5, rtol=1e-5)


def test_inductor_compiles_the_step():
    """The default inductor backend (C++ codegen on CPU) around the custom ops of the default backend."""
    torch._dynamo.reset()
    tensors = inputs()
    got = run(torch.compile(policy_step, fullgraph=True), tensors, "cpu")
    for g, e in zip(got, run(policy_step, tensors, "cpu")):
        torch.testing.assert_close(g, e, atol=1e-5, rtol=1e-5)
