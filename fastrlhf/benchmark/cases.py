"""What the benchmarks run: each op against the eager composite that TRL/OpenRLHF write today.

A case makes its inputs, names the tensors that receive gradients (none: forward only), and counts
the bytes an ideal kernel must move (reads + writes, each tensor once at its own dtype; per op in
bench/README.md), for which the benchmark times a plain copy of as many bytes beside the op.
Another op's case (a rollout, say) is one more Case in cases(), from its own module if it is large.
"""
from dataclasses import dataclass, replace
from typing import Callable

import torch

from .. import ops


@dataclass
class Case:
    op: str
    shape: tuple
    dtype: torch.dtype
    make_inputs: Callable  # (shape, dtype, device) -> dict of tensors
    eager: Callable  # the baseline: **inputs -> output(s)
    fast: Callable  # fastrlhf: **inputs -> output(s)
    grad_inputs: tuple = ()  # inputs that require grad; empty: forward only
    floor_bytes: Callable = None  # (inputs, with backward) -> least bytes moved (the module docstring)

    @property
    def name(self):
        return f"{self.op}[{'x'.join(map(str, self.shape))},{str(self.dtype).removeprefix('torch.')}]"


# ---------------------------------------------------------------- eager baselines (as users write them)

def eager_masked_mean(x, mask, dim=None):
    return (x * mask).sum() / mask.sum() if dim is None else (x * mask).sum(dim) / mask.sum(dim)


def eager_token_logprobs(logits, labels):
    logp = torch.log_softmax(logits.float(), dim=-1)
    return logp.gather(-1, labels.unsqueeze(-1)).squeeze(-1)


def eager_linear_logprobs(hidden, weight, labels):
    """The LM head, then log-probs and entropy in float32 from the full [N, V] logits."""
    logp = torch.log_softmax(torch.nn.functional.linear(hidden, weight).float(), dim=-1)
    entropy = -(logp.exp() * logp).sum(-1)
    return logp.gather(-1, labels.unsqueeze(-1)).squeeze(-1), entropy


def eager_kl_k3(logprobs, ref_logprobs):
    log_ratio = ref_logprobs.float() - logprobs.float()
    return log_ratio.exp() - 1 - log_ratio


def eager_gae(rewards, values, mask, gamma=1.0, lam=0.95):
    values, rewards = values * mask, rewards * mask
    last, reversed_advantages, T = 0.0, [], rewards.shape[-1]
    for t in reversed(range(T)):
        next_values = values[:, t + 1] if t < T - 1 else 0.0
        delta = rewards[:, t] + gamma * next_values - values[:, t]
        last = delta + gamma * lam * last
        reversed_advantages.append(last)
    advantages = torch.stack(reversed_advantages[::-1], dim=1)
    return advantages, advantages + values


def eager_masked_whiten(x, mask):
    mean = eager_masked_mean(x, mask)
    var = eager_masked_mean((x - mean) ** 2, mask)
    return (x - mean) * torch.rsqrt(var + 1e-8)


def eager_policy_loss(logprobs, old_logprobs, advantages, mask, clip_eps=0.2):
    ratio = torch.exp(logprobs - old_logprobs)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps)
    loss = eager_masked_mean(torch.max(unclipped, clipped), mask)
    stats = {"clip_frac": eager_masked_mean((clipped > unclipped).float(), mask),
             "approx_kl": 0.5 * eager_masked_mean((logprobs - old_logprobs) ** 2, mask)}
    return loss, stats


def eager_value_loss(values, old_values, returns, mask, clip_eps=0.2):
    clipped_values = old_values + torch.clamp(values - old_values, -clip_eps, clip_eps)
    unclipped, clipped = (values - returns) ** 2, (clipped_values - returns) ** 2
    loss = 0.5 * eager_masked_mean(torch.max(unclipped, clipped), mask)
    return loss, {"clip_frac": eager_masked_mean((clipped > unclipped).float(), mask)}


def eager_kl_shaped_rewards(scores, kl, mask, kl_coef=0.05):
    rewards = -kl_coef * kl * mask
    last = mask.shape[-1] - 1 - mask.flip(-1).int().argmax(-1)
    rewards[torch.arange(len(scores), device=scores.device), last] += scores
    return rewards


# ---------------------------------------------------------------- inputs

def _tokens(shape, dtype, device, *names):
    """Random per-token tensors, plus a float mask whose rows end at random lengths (right padding)."""
    B, T = shape
    lengths = torch.randint(T // 2, T + 1, (B, 1), device=device)
    mask = (torch.arange(T, device=device) < lengths).float()
    return {name: torch.randn(shape, device=device, dtype=dtype) * 0.5 for name in names} | {"mask": mask}


def _logits(shape, dtype, device):
    *lead, vocab = shape
    return {"logits": torch.randn(shape, device=device, dtype=dtype) * 2,
            "labels": torch.randint(0, vocab, lead, device=device)}


def _head(shape, dtype, device):
    rows, width, vocab = shape
    return {"hidden": torch.randn(rows, width, device=device, dtype=dtype),
            "weight": (torch.randn(vocab, width, device=device) / width**0.5).to(dtype),
            "labels": torch.randint(0, vocab, (rows,), device=device)}


def _scores(shape, dtype, device):
    inputs = _tokens(shape, dtype, device, "kl")
    return inputs | {"scores": torch.randn(shape[0], device=device, dtype=dtype)}


def _bytes(*tensors):
    return sum(t.numel() * t.element_size() for t in tensors)


def _f32(t):
    """Bytes of a float32 tensor with t's shape."""
    return 4 * t.numel()


def _logits_bytes(inputs, backward):
    logits, labels = inputs["logits"], inputs["labels"]
    rows = _bytes(labels) + 2 * _f32(labels)  # labels, log-probs and lse (backward: lse and the gradient)
    return _bytes(logits) + rows + (2 * _bytes(logits) + rows if backward else 0)


def _kl_bytes(inputs, backward):
    logprobs, ref = inputs["logprobs"], inputs["ref_logprobs"]
    forward = _bytes(logprobs, ref) + _f32(logprobs)
    return forward + (forward + _bytes(logprobs) if backward else 0)


def _streaming_bytes(reads, f32_writes):
    """An op that reads the inputs `reads` once and writes `f32_writes` float32 tensors like the first."""
    return lambda inputs, backward: _bytes(*(inputs[n] for n in reads)) + f32_writes * _f32(inputs[reads[0]])


def _masked_mean_bytes(inputs, backward):
    x, mask = inputs["x"], inputs["mask"]
    return _bytes(x, mask) + (_bytes(mask, x) if backward else 0)


def _loss_bytes(first, *others):
    def floor(inputs, backward):
        x = inputs[first]
        forward = _bytes(x, *(inputs[n] for n in others), inputs["mask"])
        return forward + (2 * _f32(x) + _bytes(x) if backward else 0)  # token gradient saved, read, applied
    return floor


def _policy(shape, dtype, device):
    return _tokens(shape, dtype, device, "logprobs", "old_logprobs", "advantages")


def _value(shape, dtype, device):
    return _tokens(shape, dtype, device, "values", "old_values", "returns")


def cases(device):
    """The benchmark cases for a device: the issue's target shapes."""
    cuda = torch.device(device).type == "cuda"
    logits_shapes = [(16, 1024, 32000), (16, 1024, 151936)] if cuda else [(4, 512, 32000)]
    logits_dtype = torch.bfloat16 if cuda else torch.float32
    tokens = (64, 1024)
    f32 = torch.float32
    policy_bytes = _loss_bytes("logprobs", "old_logprobs", "advantages")
    result = [Case("token_logprobs", s, logits_dtype, _logits, eager_token_logprobs, ops.token_logprobs,
                   ("logits",), _logits_bytes) for s in logits_shapes]
    result += [
        Case("kl_penalty", tokens, f32, lambda s, d, dev: _tokens(s, d, dev, "logprobs", "ref_logprobs"),
             lambda logprobs, ref_logprobs, mask: eager_kl_k3(logprobs, ref_logprobs),
             lambda logprobs, ref_logprobs, mask: ops.kl_penalty(logprobs, ref_logprobs, estimator="k3"),
             ("logprobs",), _kl_bytes),
        Case("gae", (512, 8192) if cuda else tokens, f32, lambda s, d, dev: _tokens(s, d, dev, "rewards", "values"),
             eager_gae, ops.gae, (), _streaming_bytes(("rewards", "values", "mask"), 2)),
        Case("masked_mean", tokens, f32, lambda s, d, dev: _tokens(s, d, dev, "x"), eager_masked_mean,
             ops.masked_mean, ("x",), _masked_mean_bytes),
        Case("masked_whiten", tokens, f32, lambda s, d, dev: _tokens(s, d, dev, "x"), eager_masked_whiten,
             ops.masked_whiten, (), _streaming_bytes(("x", "mask"), 1)),
        Case("ppo_policy_loss", tokens, f32, _policy, eager_policy_loss, ops.ppo_policy_loss, ("logprobs",),
             policy_bytes),
        Case("ppo_value_loss", tokens, f32, _value, eager_value_loss, ops.ppo_value_loss, ("values",),
             _loss_bytes("values", "old_values", "returns")),
        Case("kl_shaped_rewards", tokens, f32, _scores, eager_kl_shaped_rewards,
             lambda scores, kl, mask: ops.kl_shaped_rewards(scores, kl, mask, kl_coef=0.05), (),
             _streaming_bytes(("kl", "mask", "scores"), 1)),
    ]
    if cuda:
        result.append(Case("ppo_policy_loss", (512, 8192), f32, _policy, eager_policy_loss, ops.ppo_policy_loss,
                           ("logprobs",), policy_bytes))
    # The cost of a call itself: each op again on a [4, 8] input (token_logprobs: V = 64), where it is all
    # there is. Dispatch, checks and autograd per call: the ops' own fixed cost.
    first = {}
    for case in result:
        first.setdefault(case.op, case)
    result += [replace(c, shape=(4, 8, 64) if c.op == "token_logprobs" else (4, 8)) for c in first.values()]
    # The LM head of Qwen2.5-0.5B (H = 896, V = 151936) over N tokens: log-probs and entropy (seconds a call
    # on a CPU: bench/bench_linear_logprobs.py measures more N with fewer repeats).
    result.append(Case("linear_logprobs", (16384 if cuda else 512, 896, 151936), logits_dtype, _head,
                       eager_linear_logprobs,
                       lambda hidden, weight, labels: ops.linear_logprobs(hidden, weight, labels, return_entropy=True),
                       ("hidden", "weight")))
    return result
