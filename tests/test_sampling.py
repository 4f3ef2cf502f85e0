"""sample_tokens: the Triton kernel (interpreted on CPU) and the CPU path against the float64 specification
(reference.filtered_log_softmax / reference.sample_tokens): kept sets, drawn tokens, log-probs; and the
draws of the CPU path against the filtered softmax by a chi-square test that rejects a sampler ignoring
temperature. (test_rollout.py runs the same test through the whole sampler and a model.)"""
import pytest
import torch

from fastrlhf import ops, reference
from helpers import chi_square_p_value

IMPLEMENTATIONS = [name for name in ("triton", "reference") if name in ops.available_backends()]


@pytest.fixture(params=IMPLEMENTATIONS)
def implementation(request):
    """The device the implementation runs on: triton on CUDA when there is a GPU (else interpreted)."""
    previous = ops.set_backend(request.param)  # any backend but triton runs the CPU path on CPU tensors
    yield torch.device("cuda" if request.param == "triton" and torch.cuda.is_available() else "cpu")
    ops.set_backend(previous)


def settings(rows, vocab):
    """Per-row settings cycling through greedy, no filter, top-k (1, a few, V, > V), top-p (large, small)."""
    temperature = torch.tensor([0.7, 1.0, 0.0, 1.3, 0.5, 2.0, 0.9, 1.0])[torch.arange(rows) % 8]
    top_k = torch.tensor([0, 5, 3, 1, vocab, 2, vocab + 3, 0])[torch.arange(rows) % 8]
    top_p = torch.tensor([1.0, 0.9, 0.5, 0.3, 0.95, 1.0, 0.6, 1e-3])[torch.arange(rows) % 8]
    return temperature, top_k, top_p


def check_against_reference(device, logits, uniforms, temperature, top_k, top_p):
    inputs = (logits, uniforms, temperature, top_k, top_p)
    tokens, logprobs = (t.cpu() for t in ops.sample_tokens(*(t.to(device) for t in inputs)))
    assert tokens.dtype == torch.long and logprobs.dtype == torch.float32
    expected = reference.filtered_log_softmax(logits.double(), temperature, top_k, top_p)
    ref_tokens, _ = reference.sample_tokens(logits.double(), uniforms, temperature, top_k, top_p)
    picked = expected.gather(-1, tokens[:, None]).squeeze(-1)
    assert torch.isfinite(picked).all(), f"tokens outside the kept set: rows {(~torch.isfinite(picked)).nonzero()}"
    torch.testing.assert_close(logprobs.double(), picked, atol=1e-5, rtol=0)
    # The inverse CDF: the same token as the float64 draw, unless the uniform lies within float32 rounding of
    # a boundary of the cumulative distribution.
    cdf = expected.exp().cumsum(-1)
    near_boundary = ((cdf - uniforms[:, None].double()).abs() < 1e-5).any(-1)
    assert torch.equal(tokens[~near_boundary], ref_tokens[~near_boundary])
    greedy = temperature == 0
    assert torch.equal(tokens[greedy], logits[greedy].argmax(-1)) and (logprobs[greedy] == 0).all()
    return tokens


@pytest.mark.parametrize("vocab,rows", [(1, 3), (7, 8), (100, 16), (2500, 8)])  # 2500: a partial last tile
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_matches_the_reference(implementation, vocab, rows, dtype):
    logits = (torch.randn(rows, vocab) * 3).to(dtype)
    check_against_reference(implementation, logits, torch.rand(rows), *settings(rows, vocab))


def test_ties_and_masked_vocabulary(implementation):
    """Tied logits are kept or dropped together (top-k keeps every tie of the k-th value); -inf logits
    (a masked vocabulary, a row with fewer finite logits than k) are never drawn."""
    rows, vocab = 8, 300
    logits = torch.randint(0, 4, (rows, vocab)).float()
    logits[::2, torch.randperm(vocab)[:250]] = float("-inf")
    logits[1, 3:] = float("-inf")  # 3 finite logits, top_k 5
    check_against_reference(implementation, logits, torch.rand(rows), *settings(rows, vocab))
    one = (torch.ones(1), torch.tensor([3]), torch.ones(1))  # top-k 3 of tied values: every tie of the 3rd
    kept = torch.isfinite(reference.filtered_log_softmax(logits[:1].double(), *one))[0]
    assert torch.equal(kept, logits[0] >= logits[0].sort(descending=True).values[2])


def test_uniform_edges(implementation):
    """u = 0 draws the first token of nonzero probability; u just below 1 the last one."""
    logits = torch.tensor([[float("-inf"), 0.0, 1.0, float("-inf")]] * 2)
    unfiltered = (torch.ones(2), torch.zeros(2, dtype=torch.long), torch.ones(2))
    uniforms = torch.tensor([0.0, 1 - 2**-24])
    tokens, _ = ops.sample_tokens(*(t.to(implementation) for t in (logits, uniforms, *unfiltered)))
    assert tokens.tolist() == [1, 2]


def test_bad_arguments_are_named():
    logits = torch.randn(4, 10)
    good = [torch.rand(4), torch.ones(4), torch.zeros(4, dtype=torch.long), torch.ones(4)]
    with pytest.raises(ValueError, match="logits must be"):
        ops.sample_tokens(logits[0], *good)
    with pytest.raises(ValueError, match="uniforms must have shape"):
        ops.sample_tokens(logits, torch.rand(3), *good[1:])
    with pytest.raises(TypeError, match="top_k must be"):
        ops.sample_tokens(logits, *good[:2], torch.zeros(4), good[3])


PEAKED = torch.tensor([3.0, 2.2, 2.0, 1.1, 0.4, 0.0, -0.5, -1.0, -1.2, -2.0, -3.0, -4.0])  # p(top) ~0.4 at T=1


@pytest.mark.parametrize("temperature,top_k,top_p", [(0.7, 0, 1.0), (0.7, 4, 1.0), (1.3, 0, 0.8), (1.0, 6, 0.7)])
def test_draws_follow_the_filtered_distribution(temperature, top_k, top_p):
    """20000 draws from one peaked row: a chi-square test against the filtered softmax at a fixed seed,
    which also rejects the draws of a sampler that ignores the temperature (or the filter)."""
    n = 20000
    logits = PEAKED.expand(n, -1)
    setting = (torch.full((n,), temperature), torch.full((n,), top_k), torch.full((n,), top_p))
    expected = reference.filtered_log_softmax(PEAKED[None].double(), *(s[:1] for s in setting))[0].exp()
    uniforms = torch.rand(n, generator=torch.Generator().manual_seed(0))
    tokens, _ = ops.sample_tokens(logits, uniforms, *setting)
    assert chi_square_p_value(tokens, expected) > 1e-3
    ignoring_temperature, _ = ops.sample_tokens(logits, uniforms, torch.ones(n), *setting[1:])
    ignoring_filter, _ = ops.sample_tokens(logits, uniforms, setting[0], torch.zeros(n, dtype=torch.long),
                                           torch.ones(n))
    wrong = ([ignoring_temperature] if temperature != 1 else []) + ([ignoring_filter] if top_k or top_p < 1 else [])
    for draws in wrong:
        assert chi_square_p_value(draws, expected) < 1e-6
