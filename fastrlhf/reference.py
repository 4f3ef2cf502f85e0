"""The specification: every op in plain PyTorch, short enough to check by eye.

Every backend (Triton, C++) is tested against these functions evaluated in float64.
They compute in float32 (float64 when given float64) and autograd supplies the gradients.
No input validation here: `fastrlhf.ops` validates before any backend runs.
"""
import torch

KL_ESTIMATORS = ("k1", "k2", "k3", "abs")
REDUCTIONS = ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum")


def _compute_dtype(*tensors):
    """float64 if any input is float64, else float32."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def token_logprobs(logits, labels, *, temperature=1.0, ignore_index=-100, return_entropy=False):
    z = logits.to(_compute_dtype(logits)) / temperature
    logp = torch.log_softmax(z, dim=-1)
    ignored = labels == ignore_index
    picked = logp.gather(-1, labels.masked_fill(ignored, 0).unsqueeze(-1)).squeeze(-1)
    logprobs = picked.masked_fill(ignored, 0.0)
    if not return_entropy:
        return logprobs
    p = logp.exp()
    # p * logp is 0 where p is 0 (logits of -inf), not nan; in the gradient too.
    entropy = -(p * torch.where(p > 0, logp, 0.0)).sum(-1)
    return logprobs, entropy.masked_fill(ignored, 0.0)


def kl_penalty(logprobs, ref_logprobs, *, estimator="k1", clamp=None):
    dtype = _compute_dtype(logprobs, ref_logprobs)
    x = logprobs.to(dtype) - ref_logprobs.to(dtype)
    if estimator == "k1":
        kl = x
    elif estimator == "k2":
        kl = 0.5 * x * x
    elif estimator == "k3":
        if clamp is not None:
            x = x.clamp(min=-clamp)  # exp(-x) cannot overflow
        kl = torch.exp(-x) - 1 + x
    elif estimator == "abs":
        kl = x.abs()
    else:
        raise ValueError(f"estimator must be one of {KL_ESTIMATORS}, got {estimator!r}")
    return kl if clamp is None else kl.clamp(-clamp, clamp)


@torch.no_grad()
def gae(rewards, values, mask, *, gamma=1.0, lam=0.95):
    dtype = _compute_dtype(rewards, values)
    m = mask.to(dtype)
    rewards, values = rewards.to(dtype) * m, values.to(dtype) * m
    T = rewards.shape[-1]
    advantages = torch.zeros_like(rewards)
    next_advantage = torch.zeros_like(rewards[..., 0])
    for t in reversed(range(T)):
        next_value = values[..., t + 1] if t < T - 1 else torch.zeros_like(next_advantage)
        delta = rewards[..., t] + gamma * next_value - values[..., t]
        next_advantage = delta + gamma * lam * next_advantage
        advantages[..., t] = next_advantage
    return advantages, advantages + values


def masked_mean(x, mask, dim=None):
    m = mask.to(_compute_dtype(x))
    x = x.to(m.dtype)
    total = (x * m).sum() if dim is None else (x * m).sum(dim)
    count = m.sum() if dim is None else m.sum(dim)
    return torch.where(count > 0, total / count.clamp(min=1), 0.0)


@torch.no_grad()
def masked_whiten(x, mask, *, shift_mean=True, unbiased=False, eps=1e-8):
    m = mask.to(_compute_dtype(x))
    x = x.to(m.dtype)
    n = m.sum()
    mean = masked_mean(x, m)
    var = ((x - mean) ** 2 * m).sum() / ((n - 1) if unbiased else n).clamp(min=1)
    y = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        y = y + mean
    return y * m


def _reduce(per_token, mask, reduction):
    """Reduce a [..., T] per-token loss; a sequence is one row of the last dim."""
    m = mask.to(per_token.dtype)
    if reduction == "token_mean":
        return masked_mean(per_token, m)
    count = m.sum(-1)
    if reduction == "seq_mean_token_mean":
        per_seq = (per_token * m).sum(-1) / count.clamp(min=1)
    elif reduction == "seq_mean_token_sum":
        per_seq = (per_token * m).sum(-1)
    else:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    return masked_mean(per_seq, count > 0)  # sequences without a token do not count


def ppo_policy_loss(logprobs, old_logprobs, advantages, mask, *, clip_eps=0.2, clip_eps_high=None,
                    dual_clip=None, reduction="token_mean"):
    dtype = _compute_dtype(logprobs, old_logprobs, advantages)
    logprobs = logprobs.to(dtype)
    old_logprobs, advantages = old_logprobs.to(dtype).detach(), advantages.to(dtype).detach()
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio.clamp(-20.0, 20.0))
    high = clip_eps if clip_eps_high is None else clip_eps_high
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1 - clip_eps, 1 + high)
    per_token = torch.maximum(unclipped, clipped)
    if dual_clip is not None:
        per_token = torch.where(advantages < 0, torch.minimum(per_token, -dual_clip * advantages), per_token)
    loss = _reduce(per_token, mask, reduction)
    with torch.no_grad():
        stats = {
            "clip_frac": masked_mean((clipped > unclipped).to(dtype), mask),
            "approx_kl": masked_mean(0.5 * log_ratio**2, mask),
            "ratio_mean": masked_mean(ratio, mask),
        }
    return loss, stats


def ppo_value_loss(values, old_values, returns, mask, *, clip_eps=0.2, reduction="token_mean"):
    dtype = _compute_dtype(values, old_values, returns)
    values = values.to(dtype)
    old_values, returns = old_values.to(dtype).detach(), returns.to(dtype).detach()
    unclipped = (values - returns) ** 2
    if clip_eps is None:
        per_token, clipped = unclipped, unclipped
    else:
        clipped = (old_values + (values - old_values).clamp(-clip_eps, clip_eps) - returns) ** 2
        per_token = torch.maximum(unclipped, clipped)
    loss = 0.5 * _reduce(per_token, mask, reduction)
    with torch.no_grad():
        stats = {"clip_frac": masked_mean((clipped > unclipped).to(dtype), mask)}
    return loss, stats


@torch.no_grad()
def kl_shaped_rewards(scores, kl, mask, *, kl_coef, score_clip=None):
    dtype = _compute_dtype(scores, kl)
    m = mask.to(dtype)
    rewards = -kl_coef * kl.to(dtype) * m
    if score_clip is not None:
        scores = scores.clamp(-score_clip, score_clip)
    positions = torch.arange(1, m.shape[-1] + 1, device=m.device, dtype=dtype)
    last = (positions * m).argmax(-1, keepdim=True)  # the last masked position (EOS)
    has_tokens = m.sum(-1, keepdim=True) > 0
    score = torch.where(has_tokens, scores.to(dtype).unsqueeze(-1), 0.0)
    return rewards.scatter_add(-1, last, score)


def top_k_top_p_filter(z, top_k, top_p):
    """z [B, V] with -inf outside each row's kept set: top-k keeps z >= the k-th largest z (top_k 0 or
    >= V: all); top-p then keeps z >= the largest value v whose {z >= v} holds at least top_p of the
    top-k mass (top_p 1: all). Tied values are kept or dropped together."""
    vocab = z.shape[-1]
    ranked = z.sort(-1, descending=True).values
    k = torch.where((top_k > 0) & (top_k < vocab), top_k, vocab)
    top_k_value = ranked.gather(-1, (k - 1)[:, None])
    ranked = ranked.masked_fill(ranked < top_k_value, float("-inf"))
    mass = torch.softmax(ranked, -1).cumsum(-1)
    first = (mass < top_p[:, None].to(z.dtype)).sum(-1, keepdim=True).clamp(max=vocab - 1)
    top_p_value = torch.where(top_p[:, None] < 1, ranked.gather(-1, first), float("-inf"))
    return z.masked_fill(z < torch.maximum(top_k_value, top_p_value), float("-inf"))


def filtered_log_softmax(logits, temperature, top_k, top_p, *, filtering=True):
    """[B, V] log-probabilities of the distribution each row's token is drawn from, -inf outside its kept
    set: z = logits / temperature, then top_k_top_p_filter. A row of temperature 0 is greedy: the point
    mass at its first argmax. filtering=False promises that no row has top_k in (0, V) or top_p < 1."""
    dtype = _compute_dtype(logits)
    vocab = logits.shape[-1]
    greedy = (temperature == 0)[:, None]
    z = logits.to(dtype) / torch.where(greedy, 1.0, temperature[:, None].to(dtype))
    if filtering:
        z = top_k_top_p_filter(z, top_k, top_p)
    point_mass = torch.where(torch.arange(vocab, device=z.device) == z.argmax(-1, keepdim=True), 0.0, float("-inf"))
    return torch.where(greedy, point_mass.to(dtype), torch.log_softmax(z, -1))


@torch.no_grad()
def sample_tokens(logits, uniforms, temperature, top_k, top_p, *, filtering=True):
    """(tokens [B] int64, logprobs [B]): each row's first token, in vocabulary order, whose cumulative
    probability under filtered_log_softmax exceeds the row's uniform number in [0, 1) (the last token of
    nonzero probability if rounding leaves none), and its log-probability."""
    logp = filtered_log_softmax(logits, temperature, top_k, top_p, filtering=filtering)
    p = logp.exp()
    cdf = p.cumsum(-1)
    token = (cdf <= uniforms[:, None].to(cdf.dtype) * cdf[:, -1:]).sum(-1)
    positions = torch.arange(logits.shape[-1], device=logits.device)
    last = torch.where(p > 0, positions, 0).amax(-1)
    token = torch.minimum(token, last)
    return token, logp.gather(-1, token[:, None]).squeeze(-1)
