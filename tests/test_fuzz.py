"""Every op on every backend against its float64 reference on random cases: shapes (odd sizes, T = 1,
leading dims), dtypes, layouts (transposed, sliced), masks (bool or 0/1 numbers; holes, prefixes, empty
and full rows; NaN or inf at masked-out positions), temperatures and every option, drawn at random.
Values and gradients (for a random upstream gradient).

FASTRLHF_FUZZ_CASES cases per op and backend (default 150: a CI run of about a minute; the issue's
sweep used 2500). Each case is seeded by its index, so a failure names a case that reruns alone:
FASTRLHF_FUZZ_CASE=<index> runs just that one. The Triton interpreter is slow: smaller shapes there.
"""
import math
import os
import random

import pytest
import torch
from helpers import EPS, assert_close

from fastrlhf import ops, reference
from fastrlhf.codes import KL_ESTIMATORS, REDUCTIONS

CASES = int(os.environ.get("FASTRLHF_FUZZ_CASES", "150"))
ONLY = os.environ.get("FASTRLHF_FUZZ_CASE")
DTYPES = (torch.float32, torch.bfloat16, torch.float16)


class Draw:
    """Random inputs for one case: Python's random for choices, a torch generator for tensors."""

    def __init__(self, seed, small):
        self.random, self.small = random.Random(seed), small
        self.generator = torch.Generator().manual_seed(seed)

    def choice(self, options):
        return self.random.choice(options)

    def uniform(self, low, high):
        return self.random.uniform(low, high)

    def log_uniform(self, low, high):
        return math.exp(self.random.uniform(math.log(low), math.log(high)))

    def lead_shape(self):
        """Leading dims: none, [B] or [B, B2], small sizes."""
        return tuple(self.random.randint(1, 3 if self.small else 5) for _ in range(self.random.randint(0, 2)))

    def tokens(self):
        return self.random.choice([1, 2, 3, 7, 16, 33] if self.small else [1, 2, 5, 17, 64, 129])

    def normal(self, shape, scale=1.0):
        return torch.randn(shape, generator=self.generator) * scale

    def rand(self, shape):
        return torch.rand(shape, generator=self.generator)

    def mask(self, shape):
        """Holes, right-padded prefixes, empty or full rows; bool or 0/1 numbers."""
        kind = self.choice(["random", "prefix", "prefix", "empty", "full"])
        if kind == "random":
            mask = self.rand(shape) < self.uniform(0.0, 1.0)
        elif kind == "prefix":
            lengths = torch.randint(0, shape[-1] + 1, (*shape[:-1], 1), generator=self.generator)
            mask = torch.arange(shape[-1]) < lengths
        else:
            mask = torch.full(shape, kind == "full")
        return mask.to(self.choice([torch.bool, torch.bool, torch.float32, torch.int64, torch.uint8]))

    def layout(self, x):
        """x, or the same values in a non-contiguous layout."""
        if x.dim() >= 2 and self.random.random() < 0.3:
            return x.transpose(-1, -2).contiguous().transpose(-1, -2)
        if self.random.random() < 0.2:
            return torch.stack([x, x], -1)[..., 0]
        return x


# Each maker returns (op name, positional tensors, options, indices of the tensors that get gradients,
# tolerance): the op is called as fastrlhf.ops.<name>(*tensors, **options), the reference alike. The
# float tensors are float32 here (each case then stores them in a random dtype); a mask is the last
# tensor.

def make_token_logprobs(draw):
    lead = draw.lead_shape() or (draw.tokens(),)
    vocab = draw.choice([1, 2, 5, 37, 64] if draw.small else [1, 2, 37, 300, 1025])
    logits = draw.normal((*lead, vocab), draw.choice([0.5, 3.0, 10.0]))
    labels = torch.randint(0, vocab, lead, generator=draw.generator)
    ignore_index = draw.choice([-100, -1, 0])
    labels = labels.masked_fill(draw.rand(lead) < draw.uniform(0.0, 0.6), ignore_index)
    if draw.random.random() < 0.2:  # masked-out vocabulary entries, never the label
        logits = logits.masked_fill(draw.rand(logits.shape) < 0.2, -float("inf"))
        logits.scatter_(-1, labels.clamp(min=0).unsqueeze(-1), 0.0)
    labels = labels.to(draw.choice([torch.int64, torch.int64, torch.int32, torch.int16]))
    options = dict(temperature=draw.log_uniform(0.05, 5.0), ignore_index=ignore_index,
                   return_entropy=draw.random.random() < 0.6)
    return "token_logprobs", [draw.layout(logits), labels], options, (0,), 2e-5


def make_kl_penalty(draw):
    shape = (*draw.lead_shape(), draw.tokens())
    options = dict(estimator=draw.choice(KL_ESTIMATORS), clamp=draw.choice([None, draw.uniform(0.1, 10.0)]))
    return "kl_penalty", [draw.layout(draw.normal(shape, 1.5)), draw.normal(shape, 1.5)], options, (0, 1), 1e-5


def make_gae(draw):
    shape = (*draw.lead_shape(), draw.tokens())
    options = dict(gamma=draw.choice([1.0, draw.uniform(0.0, 1.0)]), lam=draw.choice([0.95, draw.uniform(0.0, 1.0)]))
    return "gae", [draw.layout(draw.normal(shape)), draw.normal(shape), draw.mask(shape)], options, (), 1e-5


def make_kl_shaped_rewards(draw):
    lead = draw.lead_shape()
    shape = (*lead, draw.tokens())
    options = dict(kl_coef=draw.uniform(-0.5, 0.5), score_clip=draw.choice([None, draw.uniform(0.1, 3.0)]))
    return "kl_shaped_rewards", [draw.normal(lead, 2.0), draw.normal(shape), draw.mask(shape)], options, (), 1e-6


def make_masked_mean(draw):
    shape = (*draw.lead_shape(), draw.tokens())
    x = draw.normal(shape, 3.0) + draw.choice([0.0, 10.0])
    return "masked_mean", [draw.layout(x), draw.mask(shape)], dict(dim=draw.choice([None, -1, 0])), (0,), 1e-5


def make_masked_whiten(draw):
    shape = (*draw.lead_shape(), draw.tokens())
    x = draw.normal(shape, draw.choice([1.0, 100.0])) + draw.choice([0.0, 5.0])
    options = dict(shift_mean=draw.choice([True, False]), unbiased=draw.choice([True, False]),
                   eps=draw.choice([1e-8, 1e-5, 1e-2]))
    return "masked_whiten", [draw.layout(x), draw.mask(shape)], options, (), 2e-5


def make_ppo_policy_loss(draw):
    shape = (*draw.lead_shape(), draw.tokens())
    logprobs = -4 * draw.rand(shape)
    old = logprobs - draw.uniform(0.1, 2.0) * (2 * draw.rand(shape) - 1)
    options = dict(clip_eps=draw.uniform(0.05, 0.5), clip_eps_high=draw.choice([None, draw.uniform(0.05, 0.5)]),
                   dual_clip=draw.choice([None, draw.uniform(1.1, 5.0)]), reduction=draw.choice(REDUCTIONS))
    return "ppo_policy_loss", [draw.layout(logprobs), old, draw.normal(shape), draw.mask(shape)], options, (0,), 2e-6


def make_ppo_value_loss(draw):
    shape = (*draw.lead_shape(), draw.tokens())
    values = draw.normal(shape, 2.0)
    old = values - draw.uniform(0.1, 1.0) * (2 * draw.rand(shape) - 1)
    options = dict(clip_eps=draw.choice([None, draw.uniform(0.01, 1.0)]), reduction=draw.choice(REDUCTIONS))
    return "ppo_value_loss", [draw.layout(values), old, draw.normal(shape, 2.0), draw.mask(shape)], options, (0,), 2e-6


MAKERS = [make_token_logprobs, make_kl_penalty, make_gae, make_kl_shaped_rewards, make_masked_mean,
          make_masked_whiten, make_ppo_policy_loss, make_ppo_value_loss]


def outputs(result):
    """The float outputs of an op, flattened: tensors, tuples and the losses' (loss, stats) alike."""
    if isinstance(result, torch.Tensor):
        return [result]
    return [t for part in result for t in (part.values() if isinstance(part, dict) else [part])]


def never_read(name, tensors, options):
    """Where the op never reads its inputs: masked-out positions, the logits of ignored rows (or None)."""
    if name == "token_logprobs":
        return (tensors[1] == options["ignore_index"]).unsqueeze(-1).expand(tensors[0].shape)
    return None if name == "kl_penalty" else tensors[-1] == 0


def run_case(backend, maker, index):
    draw = Draw(seed=1000 * MAKERS.index(maker) + index, small=backend.name == "triton")
    name, tensors, options, grad_inputs, tolerance = maker(draw)
    dtype = draw.choice(DTYPES)
    masked = name not in ("token_logprobs", "kl_penalty")
    values = [t.to(dtype) if t.dtype == torch.float32 and not (masked and i == len(tensors) - 1) else t
              for i, t in enumerate(tensors)]
    hidden = never_read(name, tensors, options)
    given = list(values)
    if hidden is not None and draw.random.random() < 0.4:  # NaN or inf where the op never reads
        bad = draw.choice([float("nan"), float("inf"), -float("inf")])
        given = [t.masked_fill(hidden, bad) if t.dtype == dtype and t.shape == hidden.shape and t is not tensors[-1]
                 else t for t in values]
    got_inputs = [t.detach().to(backend.device).requires_grad_(i in grad_inputs) for i, t in enumerate(given)]
    got = getattr(ops, name)(*got_inputs, **options)
    # the reference on the clean stored values, in float64
    want_inputs = [(t.double() if t.dtype == dtype else t).detach().requires_grad_(i in grad_inputs)
                   for i, t in enumerate(values)]
    want = getattr(reference, name)(*want_inputs, **options)
    what = f"case {index} of {name} ({dtype}, {[tuple(t.shape) for t in tensors]}, {options})"
    got_out, want_out = outputs(got), outputs(want)
    for g, w in zip(got_out, want_out):
        assert g.dtype == torch.float32 and g.shape == w.shape, what
        assert_close(g, w, atol=tolerance * (1 + w.abs().max().item()), rtol=10 * tolerance, what=what)
    if not grad_inputs:
        return
    differentiable = [(g, w) for g, w in zip(got_out, want_out) if w.requires_grad]
    weights = [torch.randn(w.shape, dtype=torch.float64, generator=draw.generator) for _, w in differentiable]
    sum((g.cpu().double() * c).sum() for (g, _), c in zip(differentiable, weights)).backward()
    sum((w * c).sum() for (_, w), c in zip(differentiable, weights)).backward()
    # The float64 reference resolves a gradient only to ~1e-16 of its natural scale (the upstream gradient,
    # over the temperature): a row saturated to p = 1 - 1e-33 has a label gradient of 1e-33, which the
    # kernels get and float64's 1 - p rounds to 0. Below that scale, and below the dtype's subnormal
    # step, entries are not compared; above, to a few roundings of the largest entry.
    # The reference backend is eager PyTorch in float32, whose log_softmax rounds 1 - p at a peaked label
    # to a few float32 roundings of that natural scale (the kernels keep it: they are held to the first bound).
    natural = max(c.abs().max().item() for c in weights) / options.get("temperature", 1.0)
    eager_softmax = backend.name == "reference" and name == "token_logprobs"
    floor = (8 * EPS[torch.float32] if eager_softmax else 1e-12) * natural
    for i in grad_inputs:
        g, w = got_inputs[i].grad, want_inputs[i].grad
        assert g.dtype == dtype and g.shape == tensors[i].shape, what
        atol = 8 * max(EPS[dtype], 1e-6) * w.abs().max().item() + floor + torch.finfo(dtype).tiny * EPS[dtype]
        assert_close(g, w, atol=atol, what=f"gradient, {what}")


@pytest.mark.parametrize("maker", MAKERS, ids=lambda m: m.__name__.removeprefix("make_"))
def test_fuzz(backend, maker):
    for index in [int(ONLY)] if ONLY else range(CASES):
        run_case(backend, maker, index)
