"""The rollout sampler on tiny Llama-style (rotary, grouped KV heads) and GPT-2-style (learned positions)
models built from configs: greedy decoding equals Hugging Face `generate`, draws follow the filtered
distribution, returned log-probs equal a teacher-forced forward, rows are independent of their neighbours,
and the decode step compiles with torch.compile(fullgraph=True) (the CPU stand-in for CUDA-graph capture)."""
import warnings

import pytest
import torch
import transformers
from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig

from fastrlhf import models, reference, rollout
from fastrlhf.rollout import Sampler
from helpers import chi_square_p_value

PAD, VOCAB = 0, 50
GPT2_STATIC_CACHE = tuple(int(v) for v in transformers.__version__.split(".")[:2]) >= (4, 52)
# Sampler log-probs vs a teacher-forced forward of the same float32 model on the CPU (measured: ~1e-6).
LOGPROB_TOLERANCE = 1e-5


def tiny(family, vocab=VOCAB, **overrides):
    if family == "gpt2" and not GPT2_STATIC_CACHE:
        pytest.skip("GPT-2 has a static KV cache from transformers 4.52")
    torch.manual_seed(0)
    ids = {"bos_token_id": None, "eos_token_id": None, "pad_token_id": PAD}
    if family == "llama":
        config = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, **ids,
                             **overrides)
    else:
        config = GPT2Config(vocab_size=vocab, n_embd=32, n_layer=2, n_head=4, n_positions=128, **ids, **overrides)
    return AutoModelForCausalLM.from_config(config).eval()


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def model(request):
    return tiny(request.param)


def prompts(lengths, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(1, VOCAB, (n,), generator=generator).tolist() for n in lengths]


def hf_greedy(model, prompt, max_new_tokens, eos):
    """Hugging Face's greedy continuation of one unpadded prompt, up to and with its EOS."""
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                             do_sample=False, max_new_tokens=max_new_tokens, eos_token_id=eos, pad_token_id=PAD)
    return out[0, len(prompt):].tolist()


def test_greedy_equals_generate(model):
    """Prompts of 1 to 12 tokens, left-padded in one batch of 6 (padded up to the bucket of 8); rows stop at
    their own EOS, the others run max_new_tokens."""
    batch = prompts([1, 12, 5, 3, 8, 2])
    eos = hf_greedy(model, batch[0], 10, None)[3]  # row 0 ends by its 4th token, the rows without it run on
    expected = [hf_greedy(model, p, 10, eos) for p in batch]
    assert any(len(e) < 10 for e in expected) and any(eos not in e for e in expected)
    out = Sampler(model, max_batch_size=8, max_length=32).generate(
        batch, max_new_tokens=10, temperature=0.0, eos_token_id=eos, pad_token_id=PAD)
    width = max(map(len, expected))
    assert out.response_ids.shape == out.response_mask.shape == out.logprobs.shape == (6, width)
    for row, e in enumerate(expected):
        assert out.response_ids[row].tolist() == e + [PAD] * (width - len(e))
        assert out.response_mask[row].tolist() == [True] * len(e) + [False] * (width - len(e))
    assert (out.logprobs == 0).all()  # greedy: drawn from a point mass


@pytest.mark.parametrize("temperature,top_k,top_p", [(0.7, 0, 1.0), (0.7, 4, 1.0), (1.3, 0, 0.8)])
def test_first_token_follows_the_filtered_distribution(temperature, top_k, top_p):
    """4000 draws of one prompt's first token on a 16-token vocabulary with a peaked distribution: a
    chi-square test against the filtered softmax of the model's logits at a fixed seed. Top-k and top-p
    never return a token outside their set; the same test rejects draws that ignore the temperature."""
    policy = tiny("llama", vocab=16, tie_word_embeddings=False)
    with torch.no_grad():
        policy.lm_head.weight.mul_(12)  # a peaked distribution, not a near-uniform one
        logits = policy(torch.tensor([[3, 4, 9]])).logits[:, -1].double()
    n = 4000
    setting = dict(temperature=temperature, top_k=top_k, top_p=top_p)
    per_row = (torch.tensor([temperature]), torch.tensor([top_k]), torch.tensor([top_p]))
    expected = reference.filtered_log_softmax(logits, *per_row)[0].exp()
    assert expected.max() > 0.3 and (expected > 0.01).sum() >= 3
    sampler = Sampler(policy, max_batch_size=n, max_length=4)
    draw = dict(max_new_tokens=1, eos_token_id=None, pad_token_id=PAD, seed=0)
    tokens = sampler.generate([[3, 4, 9]] * n, **setting, **draw).response_ids[:, 0]
    assert expected[tokens].min() > 0  # inside the top-k set and the nucleus
    assert chi_square_p_value(tokens, expected) > 1e-3
    ignoring_temperature = sampler.generate([[3, 4, 9]] * n, **{**setting, "temperature": 1.0}, **draw)
    assert chi_square_p_value(ignoring_temperature.response_ids[:, 0], expected) < 1e-6


@pytest.mark.parametrize("filtered", [False, True], ids=["plain", "top_k_top_p"])
def test_logprobs_equal_a_teacher_forced_forward(model, filtered):
    """The sampler's log-probs are those of one forward over prompt + response (left padding included)
    under the same temperature and filtering, within LOGPROB_TOLERANCE."""
    batch = prompts([4, 1, 9, 6])
    setting = dict(temperature=0.7, top_k=5 if filtered else 0, top_p=0.9 if filtered else 1.0)
    out = Sampler(model, max_batch_size=4, max_length=32).generate(
        batch, max_new_tokens=12, eos_token_id=7, pad_token_id=PAD, seed=3, **setting)
    prompt_ids, prompt_mask = rollout.data.pad(batch, PAD, "left")
    ids = torch.cat([prompt_ids, out.response_ids], 1)
    mask = torch.cat([prompt_mask, out.response_mask], 1)
    with torch.no_grad():
        if not filtered:
            expected = models.response_logprobs(model, ids, mask, out.response_ids, out.response_mask, 0.7)
        else:
            logits = models.logits(model, ids, mask)[:, prompt_ids.shape[1] - 1:-1].double()
            per_row = [torch.full((len(batch) * logits.shape[1],), v) for v in setting.values()]
            logp = reference.filtered_log_softmax(logits.flatten(0, 1), *per_row).view_as(logits)
            expected = logp.gather(-1, out.response_ids[..., None]).squeeze(-1).masked_fill(~out.response_mask, 0)
    assert out.response_mask.sum() > 20 and torch.isfinite(expected).all()
    torch.testing.assert_close(out.logprobs.double(), expected.double(), atol=LOGPROB_TOLERANCE, rtol=0)


def test_a_row_does_not_depend_on_its_neighbours_or_the_bucket(model):
    """Same seed, same tokens; a row given its own uniforms draws the same tokens alone, among 4 or 7 other
    rows (other buckets of the same sampler, reused in between)."""
    batch = prompts([3, 7, 2, 11, 5, 1, 4, 6])
    uniforms = torch.rand(8, 9, generator=torch.Generator().manual_seed(5))
    sampler = Sampler(model, max_batch_size=8, max_length=24)
    draw = dict(max_new_tokens=9, temperature=1.0, eos_token_id=7, pad_token_id=PAD)
    everyone = sampler.generate(batch, uniforms=uniforms, **draw)
    again = sampler.generate(batch, uniforms=uniforms.clone(), **draw)
    assert torch.equal(everyone.response_ids, again.response_ids)
    for rows in ([3], [0, 3, 5, 6, 7], [1, 2, 3]):
        out = sampler.generate([batch[r] for r in rows], uniforms=uniforms[rows], **draw)
        at = rows.index(3)
        length = everyone.response_mask[3].sum()
        assert torch.equal(out.response_ids[at, :length], everyone.response_ids[3, :length])
        assert out.response_mask[at].sum() == length
        torch.testing.assert_close(out.logprobs[at, :length], everyone.logprobs[3, :length], atol=1e-6, rtol=0)
    seeded = [sampler.generate(batch[:3], seed=11, **draw).response_ids for _ in range(2)]
    assert torch.equal(*seeded)


def test_decode_step_compiles_without_graph_break_or_recompile(model):
    """torch.compile(fullgraph=True, dynamic=False) of the decode step: no graph break, no data-dependent
    shape, one graph for every step of a bucket (the CPU proxy for CUDA-graph capture); same results."""
    sampler = Sampler(model, max_batch_size=4, max_length=32)
    draw = dict(max_new_tokens=8, temperature=0.8, top_k=6, eos_token_id=7, pad_token_id=PAD, seed=2)
    batch = prompts([2, 9, 4])
    eager = sampler.generate(batch, **draw)
    torch._dynamo.reset()
    sampler.decode_step = torch.compile(sampler.decode_step, fullgraph=True, dynamic=False, backend="eager")
    with torch._dynamo.config.patch(error_on_recompile=True):
        for _ in range(2):
            compiled = sampler.generate(batch, **draw)
            assert torch.equal(compiled.response_ids, eager.response_ids)
            torch.testing.assert_close(compiled.logprobs, eager.logprobs, atol=1e-6, rtol=0)
    torch._dynamo.reset()


def test_no_deprecation_warning_reaches_the_user(model, caplog):
    """With this transformers version's cache keyword nothing is deprecated; the old keyword would warn
    on transformers 5 (checked, so the test can fail)."""
    sampler = Sampler(model, max_batch_size=2, max_length=16)
    draw = dict(max_new_tokens=4, eos_token_id=None, pad_token_id=PAD, seed=0)

    def messages():
        caplog.clear()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            sampler.generate(prompts([3, 5]), **draw)
        return [str(w.message) for w in caught] + [r.getMessage() for r in caplog.records]

    with caplog.at_level("WARNING"):
        assert not [m for m in messages() if "deprecat" in m.lower()]
        if sampler._cache_keyword == "cache":
            sampler._cache_keyword = "past_key_values"
            assert [m for m in messages() if "deprecat" in m.lower()]


def test_bad_arguments_are_named():
    sampler = Sampler(tiny("llama"), max_batch_size=2, max_length=8)
    draw = dict(max_new_tokens=3, eos_token_id=None, pad_token_id=PAD)
    cases = [(dict(prompts=[[1]] * 3), "max_batch_size"), (dict(prompts=[[1] * 6]), "max_length"),
             (dict(prompts=[[1]], top_p=0.0), "top_p"), (dict(prompts=[[1]], top_k=-1), "top_k"),
             (dict(prompts=[[1]], temperature=-0.5), "temperature"), (dict(prompts=[[]]), "non-empty"),
             (dict(prompts=(torch.ones(1, 2, dtype=torch.long), torch.tensor([[1, 0]]))), "left-padded"),
             (dict(prompts=[[1]], uniforms=torch.rand(1, 2)), "uniforms"),
             (dict(prompts=[[1]], uniforms=torch.rand(1, 3), seed=1), "seed or uniforms"),
             (dict(prompts=[[1]], eos_token_id=[2, 3]), "eos_token_id")]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            sampler.generate(**{**draw, **kwargs})
    with pytest.raises(ValueError, match="learned positions"):
        Sampler(tiny("gpt2"), max_batch_size=1, max_length=129)
    with pytest.raises(ValueError, match="sliding window"):
        Sampler(tiny("llama", sliding_window=16, use_sliding_window=True), max_batch_size=1, max_length=32)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_cuda_graphs_replay_the_eager_step(model):
    """On a GPU: the captured graphs give the eager step's tokens (and log-probs to float32 rounding)."""
    model = model.cuda()
    batch = prompts([3, 12, 1, 6, 5])
    draw = dict(max_new_tokens=20, temperature=0.9, top_p=0.95, eos_token_id=7, pad_token_id=PAD, seed=4)
    graphed = Sampler(model, max_batch_size=8, max_length=64).generate(batch, **draw)
    eager = Sampler(model, max_batch_size=8, max_length=64, cuda_graphs=False).generate(batch, **draw)
    model.cpu()
    assert torch.equal(graphed.response_ids, eager.response_ids)
    torch.testing.assert_close(graphed.logprobs, eager.logprobs, atol=1e-5, rtol=0)
