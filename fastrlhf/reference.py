"""The specification: every op in plain PyTorch, short enough to check by eye.

Every backend (Triton, C++) is tested against these functions evaluated in float64.
They compute in float32 (float64 when given float64) and autograd supplies the gradients.
No input validation here: `fastrlhf.ops` validates before any backend runs.

Masks: a position is kept where the mask is nonzero (fastrlhf.ops rejects masks with values other
than 0 and 1). A masked-out position is never read: it is replaced by 0 before anything uses it, so
NaN or inf there changes no value and no gradient (whose entries there are 0). The same holds for the
logits of rows whose label is ignore_index. Labels may be any integer dtype.
"""
import torch

from .codes import KL_ESTIMATORS, REDUCTIONS  # noqa: F401 (the option names, re-exported)


def _compute_dtype(*tensors):
    """float64 if any input is float64, else float32."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def _kept(mask):
    return mask != 0


def _read(x, kept, dtype):
    """x in dtype, 0 where not kept: a masked-out position is never read."""
    return torch.where(kept, x.to(dtype), 0.0)


def token_logprobs(logits, labels, *, temperature=1.0, ignore_index=-100, return_entropy=False):
    labels = labels.long()
    ignored = labels == ignore_index
    z = _read(logits, ~ignored.unsqueeze(-1), _compute_dtype(logits))
    # Shifted by the row max before the division (a constant shift: the same distribution, and no
    # precision lost to z / temperature at low temperatures). The kernels compute exactly this.
    logp = torch.log_softmax((z - z.amax(-1, keepdim=True).detach()) / temperature, dim=-1)
    picked = logp.gather(-1, labels.masked_fill(ignored, 0).unsqueeze(-1)).squeeze(-1)
    logprobs = picked.masked_fill(ignored, 0.0)
    if not return_entropy:
        return logprobs
    p = logp.exp()
    # p * logp is 0 where p is 0 (logits of -inf), not nan; in the gradient too.
    entropy = -(p * torch.where(p > 0, logp, 0.0)).sum(-1)
    return logprobs, entropy.masked_fill(ignored, 0.0)


def linear_logprobs(hidden, weight, labels, *, bias=None, temperature=1.0, ignore_index=-100, return_entropy=False,
                    logit_scale=None, softcap=None):
    """token_logprobs of the LM head's logits z = softcap(logit_scale * hidden @ weight.T + bias), with
    softcap(x) = softcap * tanh(x / softcap). The logits are made in the inputs' dtype, as the head makes
    them, one rounding per step (the kernels make them one chunk of rows at a time and never hold them
    all). The hidden states of rows whose label is ignore_index are never read."""
    hidden = hidden.masked_fill((labels == ignore_index).unsqueeze(-1), 0)
    z = torch.nn.functional.linear(hidden, weight)
    if logit_scale is not None:
        z = z * logit_scale
    if bias is not None:
        z = z + bias
    if softcap is not None:
        z = softcap * torch.tanh(z / softcap)
    return token_logprobs(z, labels, temperature=temperature, ignore_index=ignore_index, return_entropy=return_entropy)

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
    kept = _kept(mask)
    rewards, values = _read(rewards, kept, dtype), _read(values, kept, dtype)
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
    kept = _kept(mask)
    x = _read(x, kept, _compute_dtype(x))
    total = x.sum() if dim is None else x.sum(dim)
    count = kept.sum() if dim is None else kept.sum(dim)
    return torch.where(count > 0, total / count.clamp(min=1), 0.0)


@torch.no_grad()
def masked_whiten(x, mask, *, shift_mean=True, unbiased=False, eps=1e-8):
    dtype = _compute_dtype(x)
    kept = _kept(mask)
    x = _read(x, kept, torch.float64)  # the variance of float32 data can pass float32's range
    n = kept.sum()
    mean = masked_mean(x, kept)
    var = torch.where(kept, (x - mean) ** 2, 0.0).sum() / ((n - 1) if unbiased else n).clamp(min=1)
    y = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        y = y + mean
    return torch.where(kept, y, 0.0).to(dtype)


def _reduce(per_token, kept, reduction):
    """Reduce a [..., T] per-token loss; a sequence is one row of the last dim."""
    if reduction == "token_mean":
        return masked_mean(per_token, kept)
    count = kept.sum(-1)
    if reduction == "seq_mean_token_mean":
        per_seq = torch.where(kept, per_token, 0.0).sum(-1) / count.clamp(min=1)
    elif reduction == "seq_mean_token_sum":
        per_seq = torch.where(kept, per_token, 0.0).sum(-1)
    else:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    return masked_mean(per_seq, count > 0)  # sequences without a token do not count


def ppo_policy_loss(logprobs, old_logprobs, advantages, mask, *, clip_eps=0.2, clip_eps_high=None,
                    dual_clip=None, reduction="token_mean"):
    dtype = _compute_dtype(logprobs, old_logprobs, advantages)
    kept = _kept(mask)
    logprobs = _read(logprobs, kept, dtype)
    old_logprobs, advantages = _read(old_logprobs, kept, dtype).detach(), _read(advantages, kept, dtype).detach()
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio.clamp(-20.0, 20.0))
    high = clip_eps if clip_eps_high is None else clip_eps_high
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1 - clip_eps, 1 + high)
    per_token = torch.maximum(unclipped, clipped)
    if dual_clip is not None:
        per_token = torch.where(advantages < 0, torch.minimum(per_token, -dual_clip * advantages), per_token)
    loss = _reduce(per_token, kept, reduction)
    with torch.no_grad():
        stats = {
            "clip_frac": masked_mean((clipped > unclipped).to(dtype), kept),
            "approx_kl": masked_mean(0.5 * log_ratio**2, kept),
            "ratio_mean": masked_mean(ratio, kept),
        }
    return loss, stats


def ppo_value_loss(values, old_values, returns, mask, *, clip_eps=0.2, reduction="token_mean"):
    dtype = _compute_dtype(values, old_values, returns)
    kept = _kept(mask)
    values = _read(values, kept, dtype)
    old_values, returns = _read(old_values, kept, dtype).detach(), _read(returns, kept, dtype).detach()
    unclipped = (values - returns) ** 2
    if clip_eps is None:
        per_token, clipped = unclipped, unclipped
    else:
        # Inside the clip range the clipped value is v itself (old + (v - old) would round), so the two
        # branches tie exactly there and only truly clipped tokens count in clip_frac.
        delta = values - old_values
        clipped_values = torch.where(delta.abs() > clip_eps, old_values + delta.clamp(-clip_eps, clip_eps), values)
        clipped = (clipped_values - returns) ** 2
        per_token = torch.maximum(unclipped, clipped)
    loss = 0.5 * _reduce(per_token, kept, reduction)
    with torch.no_grad():
        stats = {"clip_frac": masked_mean((clipped > unclipped).to(dtype), kept)}
    return loss, stats


@torch.no_grad()
def kl_shaped_rewards(scores, kl, mask, *, kl_coef, score_clip=None):
    dtype = _compute_dtype(scores, kl)
    kept = _kept(mask)
    rewards = -kl_coef * _read(kl, kept, dtype)
    scores = scores.to(dtype)
    if score_clip is not None:
        scores = scores.clamp(-score_clip, score_clip)
    positions = torch.arange(1, kept.shape[-1] + 1, device=kept.device, dtype=dtype)
    last = (positions * kept).argmax(-1, keepdim=True)  # the last masked position (EOS)
    has_tokens = kept.any(-1, keepdim=True)
    score = torch.where(has_tokens, scores.unsqueeze(-1), 0.0)
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
