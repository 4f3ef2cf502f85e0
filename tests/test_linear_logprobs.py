import math

import pytest
import torch
from helpers import EPS, assert_close, leaf
from reduction_testing import opcheck

from fastrlhf import ops, reference

DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def random_labels(shape, vocab, ignore_every=3):
    labels = torch.randint(0, vocab, shape)
    labels.view(-1)[1::ignore_every] = -100  # some ignored positions in every batch
    return labels


def head(leading, width, vocab, scale=3.0, with_bias=True):
    """hidden [*leading, H], weight [V, H], bias [V] (or None): logits of about `scale` in size."""
    hidden = torch.randn(*leading, width)
    weight = torch.randn(vocab, width) * scale / math.sqrt(width)
    return hidden, weight, torch.randn(vocab) if with_bias else None


def expected(hidden, weight, bias, labels, dtype, **options):
    """The float64 reference on the stored inputs, with each step of the head's logits rounded to `dtype`
    when that is 16-bit (the op makes them in the inputs' dtype, as the LM head does). The rounding
    passes gradients through unchanged. Returns (logprobs, entropy), and the matmul's output z0 and the
    logits after the bias, zb, whose gradients bound the rounding errors of the op's gradients."""
    def rounded(z):
        return z if dtype == torch.float32 else z + (z.to(dtype).double() - z).detach()

    hidden = hidden.masked_fill((labels == options.get("ignore_index", -100)).unsqueeze(-1), 0)
    z0 = rounded(torch.nn.functional.linear(hidden, weight))
    z = z0 if options.get("logit_scale") is None else rounded(z0 * options["logit_scale"])
    zb = z if bias is None else rounded(z + bias)
    z = zb
    if options.get("softcap") is not None:
        z = rounded(options["softcap"] * rounded(torch.tanh(rounded(z / options["softcap"]))))
    for t in (z0, zb):
        t.retain_grad()
    out = reference.token_logprobs(z, labels, temperature=options.get("temperature", 1.0), return_entropy=True,
                                   ignore_index=options.get("ignore_index", -100))
    return out, z0, zb


def assert_matmul_grad_close(actual, expected, terms, dtype, contracted, what):
    """A gradient that is a sum of `contracted` products whose absolute values sum to `terms`: within the
    rounding of the stored dtype and of a float32 sum of that many terms, plus a few units of rounding of
    the largest entry (as assert_grad_close: the gradient of the logits is itself rounded)."""
    floor = 4 * max(EPS[dtype], 2e-6) * expected.abs().max()
    tolerance = (8 * EPS[dtype] + 1e-6 * contracted**0.5) * terms + floor
    error = (actual.detach().double().cpu() - expected).abs()
    assert (error <= tolerance).all(), f"{what}: error {error.max().item():.3g}, {(error / tolerance).max():.3g}x the bound"


def check(backend, hidden, weight, bias, labels, dtype=torch.float32, **options):
    """Values and gradients (hidden, weight, bias) through both outputs vs the float64 reference."""
    stored = [None if t is None else t.to(dtype) for t in (hidden, weight, bias)]
    got_in = [None if t is None else leaf(t, backend.device) for t in stored]
    want_in = [None if t is None else leaf(t, "cpu", torch.float64) for t in stored]
    got = ops.linear_logprobs(got_in[0], got_in[1], labels.to(backend.device), bias=got_in[2], return_entropy=True,
                              **options)
    spec = {k: v for k, v in options.items() if k != "chunk_size"}
    want, z0, zb = expected(*want_in, labels, dtype, **spec)
    if dtype == torch.float32:  # the float64 reference itself
        assert_close(want[0], reference.linear_logprobs(*want_in[:2], labels, bias=want_in[2], **spec), atol=1e-12,
                     what="expected")
    weights = [torch.randn(labels.shape, dtype=torch.float64) for _ in got]
    sum((g.cpu().double() * w).sum() for g, w in zip(got, weights)).backward()
    sum((w_ * w).sum() for w_, w in zip(want, weights)).backward()
    for name, g, w in zip(("logprobs", "entropy"), got, want):
        assert g.dtype == torch.float32 and g.shape == labels.shape
        assert_close(g, w, atol=5e-5, rtol=5e-5, what=name)
    for t in got_in:
        if t is not None:
            assert t.grad.dtype == dtype and t.grad.shape == t.shape and not torch.isnan(t.grad).any()
    h, w, g0 = want_in[0].detach().abs(), want_in[1].detach().abs(), z0.grad.abs()
    vocab, width = weight.shape
    assert_matmul_grad_close(got_in[0].grad, want_in[0].grad, g0 @ w, dtype, vocab, "grad hidden")
    rows = g0.reshape(-1, vocab)
    assert_matmul_grad_close(got_in[1].grad, want_in[1].grad, rows.T @ h.reshape(-1, width), dtype, rows.shape[0],
                             "grad weight")
    if bias is not None:
        assert_matmul_grad_close(got_in[2].grad, want_in[2].grad, zb.grad.abs().reshape(-1, vocab).sum(0), dtype,
                                 rows.shape[0], "grad bias")
    return got


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("vocab", [1, 7, 50257])
def test_matches_reference(backend, dtype, vocab):
    hidden, weight, bias = head((2, 3), 16, vocab)
    check(backend, hidden, weight, bias, random_labels((2, 3), vocab), dtype, chunk_size=4)


def test_qwen_vocabulary(backend):
    """V = 151936 (Qwen2.5/Qwen3's head), the default chunk size: more than one chunk of rows."""
    hidden, weight, _ = head((3,), 8, 151936, with_bias=False)
    check(backend, hidden, weight, None, random_labels((3,), 151936), chunk_size=2)


def test_bf16_large_magnitude(backend):
    hidden, weight, bias = head((3, 5), 32, 4099, scale=30.0)  # |z| ~ 30 and beyond
    check(backend, hidden, weight, bias, random_labels((3, 5), 4099), torch.bfloat16, chunk_size=4)


def test_all_negative_logits(backend):
    hidden, weight, bias = head((2, 4), 16, 301)
    bias = bias - 60.0  # every logit far below 0
    check(backend, hidden, weight, bias, random_labels((2, 4), 301))


@pytest.mark.parametrize("options", [dict(temperature=0.6), dict(temperature=1.7, logit_scale=0.25),
                                     dict(softcap=5.0), dict(softcap=2.0, logit_scale=3.0, temperature=0.8)])
def test_temperature_scale_softcap(backend, options):
    hidden, weight, bias = head((4, 3), 16, 203, scale=6.0)
    check(backend, hidden, weight, bias, random_labels((4, 3), 203), chunk_size=5, **options)


@pytest.mark.parametrize("chunk_size", [1, 3, 5, 7, 100])
def test_chunk_sizes(backend, chunk_size):
    hidden, weight, bias = head((7,), 12, 97)
    check(backend, hidden, weight, bias, random_labels((7,), 97), chunk_size=chunk_size)


@pytest.mark.parametrize("leading", [(5,), (2, 3, 2)])
def test_leading_shapes(backend, leading):
    hidden, weight, bias = head(leading, 8, 129)
    check(backend, hidden, weight, bias, random_labels(leading, 129), chunk_size=4)


def test_ignored_rows_are_never_read(backend):
    """NaN in the hidden states of ignored rows changes nothing, and their gradient is 0."""
    hidden, weight, bias = head((2, 6), 8, 33)
    labels = random_labels((2, 6), 33)
    ignored = labels == -100
    dirty = leaf(hidden.masked_fill(ignored[..., None], math.nan), backend.device)
    w = leaf(weight, backend.device)
    lp, ent = ops.linear_logprobs(dirty, w, labels.to(backend.device), return_entropy=True, chunk_size=1)
    clean = ops.linear_logprobs(hidden.to(backend.device), weight.to(backend.device), labels.to(backend.device),
                                return_entropy=True, chunk_size=1)
    assert_close(lp, clean[0], atol=0, what="logprobs")
    assert_close(ent, clean[1], atol=0, what="entropy")
    (lp.sum() + ent.sum()).backward()
    assert (dirty.grad[ignored] == 0).all() and not torch.isnan(w.grad).any()


def test_fully_ignored_batch(backend):
    hidden, weight, bias = (leaf(t, backend.device) for t in head((2, 3), 8, 17))
    labels = torch.full((2, 3), -7, device=backend.device)
    lp, ent = ops.linear_logprobs(hidden, weight, labels, bias=bias, ignore_index=-7, return_entropy=True)
    (lp.sum() + ent.sum()).backward()
    assert (lp == 0).all() and (ent == 0).all()
    for t in (hidden, weight, bias):
        assert (t.grad == 0).all()


def test_tied_weights(backend):
    """The embedding's gradient is the sum of the head's and the lookup's, as with untied copies."""
    hidden, weight, _ = head((2, 5), 8, 41)
    tokens, labels = torch.randint(0, 41, (2, 5)), random_labels((2, 5), 41)

    def loss(embedding, out):
        h = hidden.to(backend.device) + embedding[tokens.to(backend.device)]
        lp, ent = ops.linear_logprobs(h, out, labels.to(backend.device), return_entropy=True, chunk_size=3)
        return lp.sum() - 0.3 * ent.sum()

    tied = leaf(weight, backend.device)
    loss(tied, tied).backward()
    lookup, out = leaf(weight, backend.device), leaf(weight, backend.device)
    loss(lookup, out).backward()
    assert_close(tied.grad, lookup.grad + out.grad, atol=1e-6, what="tied grad")


def test_bf16_weight_gradient_accumulates_in_float32(backend):
    """Many chunks whose gradients add up in the same rows of weight: the error of the bf16 weight
    gradient stays within float32 accumulation (a bf16 rounding of each chunk's product, one of the
    sum), and a bf16 accumulator across chunks would not."""
    rows, chunk, width, vocab = 64, 2, 16, 11
    hidden = torch.rand(rows, width) + 0.5  # same sign: the sums grow chunk after chunk
    hidden[:chunk] *= 256  # a first chunk that dwarfs each later one: in bf16 they would round away
    weight = torch.randn(vocab, width) * 0.1
    labels = torch.zeros(rows, dtype=torch.long)  # every row pulls weight[0] the same way
    h, w = hidden.bfloat16(), leaf(weight.bfloat16(), backend.device)
    ops.linear_logprobs(h.to(backend.device), w, labels.to(backend.device), chunk_size=chunk).sum().backward()
    h64, w64 = h.double(), leaf(weight.bfloat16(), "cpu", torch.float64)
    expected(h64, w64, None, labels, torch.bfloat16)[0][0].sum().backward()
    # per chunk: grad_z rounded to bf16, then the product rounded to bf16; the sum rounded once at the end
    z = (h64 @ w64.detach().T).bfloat16().double()
    grad_z = (torch.nn.functional.one_hot(labels, vocab) - z.softmax(-1)).bfloat16().double()
    partials = [grad_z[i:i + chunk].T @ h64[i:i + chunk] for i in range(0, rows, chunk)]
    bound = 3 * EPS[torch.bfloat16] * (sum(p.abs() for p in partials) + w64.grad.abs()) + 1e-6
    error = (w.grad.double().cpu() - w64.grad).abs()
    assert (error <= bound).all(), (error / bound).max()
    bf16_sum = torch.zeros_like(partials[0]).bfloat16()
    for p in partials:
        bf16_sum = (bf16_sum.double() + p.bfloat16().double()).bfloat16()
    assert not ((bf16_sum.double() - w64.grad).abs() <= bound).all()  # the test can fail


def test_no_grad_saves_and_allocates_nothing_for_backward(backend):
    """Old/reference log-probs: no graph, nothing saved, and no allocation of a gradient's size."""
    hidden, weight, _ = head((4, 2), 64, 509)
    saved = []
    hidden, weight = leaf(hidden, backend.device), leaf(weight, backend.device)
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        with torch.no_grad():
            lp = ops.linear_logprobs(hidden, weight, random_labels((4, 2), 509).to(backend.device), chunk_size=2)
        assert lp.grad_fn is None and not saved
        ops.linear_logprobs(hidden, weight, random_labels((4, 2), 509).to(backend.device), chunk_size=2)
        assert saved  # the hook sees what a graph saves
    if backend.name != "reference":
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
            with torch.no_grad():
                ops.linear_logprobs(hidden, weight, random_labels((4, 2), 509).to(backend.device), chunk_size=2)
        biggest = max(e.cpu_memory_usage for e in prof.events())
        assert 0 < biggest < weight.numel() * 4  # a chunk of logits, never a weight-sized gradient buffer


def test_registered_op(backend):
    if backend.name == "reference":
        pytest.skip("the reference backend does not call the operator")
    hidden, weight, bias = head((2, 3), 8, 29)
    labels = random_labels((2, 3), 29)
    for with_entropy in (False, True):
        opcheck(backend, torch.ops.fastrlhf.linear_logprobs.default, hidden.requires_grad_(),
                weight.requires_grad_(), bias.requires_grad_(), labels, 0.7, -100, with_entropy, 1.5, 4.0, 4)


BAD = [
    (dict(hidden=torch.zeros(3, 8, dtype=torch.int32)), TypeError, "hidden"),
    (dict(weight=torch.zeros(11, 9)), ValueError, "weight"),
    (dict(weight=torch.zeros(11, 8, dtype=torch.float16)), TypeError, "weight"),
    (dict(bias=torch.zeros(10)), ValueError, "bias"),
    (dict(bias=torch.zeros(11, dtype=torch.float16)), TypeError, "bias"),
    (dict(labels=torch.zeros(4, dtype=torch.long)), ValueError, "labels"),
    (dict(labels=torch.zeros(3)), TypeError, "labels"),
    (dict(labels=torch.tensor([0, 11, 2])), ValueError, "labels"),
    (dict(temperature=0.0), ValueError, "temperature"),
    (dict(logit_scale=math.nan), ValueError, "logit_scale"),
    (dict(logit_scale="2"), TypeError, "logit_scale"),
    (dict(softcap=-1.0), ValueError, "softcap"),
    (dict(chunk_size=0), ValueError, "chunk_size"),
]


@pytest.mark.parametrize("change,error,name", BAD, ids=[f"{name}-{i}" for i, (_, _, name) in enumerate(BAD)])
def test_bad_input(backend, change, error, name):
    args = dict(hidden=torch.zeros(3, 8), weight=torch.zeros(11, 8), bias=None, labels=torch.zeros(3, dtype=torch.long))
    args.update(change)
    tensors = {k: v.to(backend.device) if isinstance(v, torch.Tensor) else v for k, v in args.items()}
    with pytest.raises(error, match=name):
        ops.linear_logprobs(tensors.pop("hidden"), tensors.pop("weight"), tensors.pop("labels"), **tensors)


def test_compiles_without_graph_breaks(backend):
    """Inside torch.compile(fullgraph=True): the same values and gradients as eager."""
    torch._dynamo.reset()
    hidden, weight, bias = head((2, 3), 8, 37)
    labels = random_labels((2, 3), 37)

    def loss(hidden, weight, bias, labels):
        lp, ent = ops.linear_logprobs(hidden, weight, labels, bias=bias, temperature=0.9, return_entropy=True,
                                      softcap=4.0, chunk_size=4)
        return lp.sum() - 0.1 * ent.sum()

    results = []
    for fn in (loss, torch.compile(loss, fullgraph=True, backend="aot_eager")):
        leaves = [leaf(t, backend.device) for t in (hidden, weight, bias)]
        value = fn(*leaves, labels.to(backend.device))
        results.append([value, *torch.autograd.grad(value, leaves)])
    for got, want in zip(*results):
        assert_close(got, want, atol=1e-6, what="compiled")


def test_registered_ops_validate_their_inputs(backend):
    """torch.ops.fastrlhf.linear_logprobs(_backward) called directly: bad arguments raise, naming them."""
    if backend.name == "reference":
        pytest.skip("the reference backend calls no registered op")
    f, d = torch.ops.fastrlhf, backend.device
    hidden, weight, labels = torch.randn(3, 8, device=d), torch.randn(11, 8, device=d), torch.zeros(3, dtype=torch.long, device=d)
    stats, rows = torch.zeros(3, 2, device=d), torch.zeros(3, device=d)

    def forward(**change):
        args = dict(hidden=hidden, weight=weight, bias=None, labels=labels, temperature=1.0, ignore_index=-100,
                    with_entropy=True, logit_scale=1.0, softcap=math.inf, chunk_size=2) | change
        return f.linear_logprobs(*args.values())

    def backward(**change):
        args = dict(hidden=hidden, weight=weight, bias=None, labels=labels, stats=stats, entropy=rows,
                    grad_logprobs=rows, grad_entropy=rows, temperature=1.0, ignore_index=-100, logit_scale=1.0,
                    softcap=math.inf, chunk_size=2, output_mask=[True, True, False]) | change
        return f.linear_logprobs_backward(*args.values())

    for call in (forward, backward):
        for name, bad in {"weight": torch.randn(11, 7, device=d), "bias": torch.randn(10, device=d),
                          "labels": labels[:2], "temperature": 0.0, "logit_scale": math.nan, "softcap": 0.0,
                          "chunk_size": 0}.items():
            with pytest.raises((ValueError, TypeError), match=name):
                call(**{name: bad})
        with pytest.raises(ValueError, match="labels"):
            call(labels=labels + 11)
    for name, bad in {"stats": stats[:2], "grad_logprobs": rows[:2], "entropy": rows[:2]}.items():
        with pytest.raises(ValueError, match=name):
            backward(**{name: bad})
