"""The reward is read at the EOS token: right padding, left padding, post-EOS padding, rows without
EOS; generation truncates after EOS and its cache changes nothing; padding never changes a logprob,
a value or a score."""

import pytest
import torch

from fastrlhf import data, models, ppo
from fastrlhf.training import ops
from fastrlhf.generation import generate


@pytest.fixture(scope="module")
def tokenizer():
    return models.load_tokenizer("demo")


@pytest.fixture(scope="module")
def tiny(tokenizer, tmp_path_factory):
    torch.manual_seed(0)
    policy = models.load_policy("demo", tokenizer)
    path = tmp_path_factory.mktemp("policy")
    models.save(policy, tokenizer, path)
    return policy, models.load_value_model(str(path), tokenizer)


def test_last_token_index_right_left_and_both():
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 0, 1, 1, 1], [0, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    assert models.last_token_index(mask).tolist() == [2, 4, 2, 4]


def test_score_is_the_value_at_eos_whatever_the_padding(tokenizer, tiny):
    _, value_model = tiny
    sequence = tokenizer("review : room the room was good .")["input_ids"] + [tokenizer.eos_token_id]
    pad = tokenizer.pad_token_id
    right_ids, right_mask = data.pad([sequence, sequence[:4]], pad, "right")
    left_ids, left_mask = data.pad([sequence, sequence[:4]], pad, "left", length=len(sequence) + 3)
    with torch.no_grad():
        values = value_model(right_ids, right_mask)
        right, left = value_model.score(right_ids, right_mask), value_model.score(left_ids, left_mask)
    assert right[0] == values[0, len(sequence) - 1]  # the EOS, not the first PAD
    torch.testing.assert_close(left, right, atol=1e-5, rtol=1e-5)


class Recorded(torch.nn.Module):
    """A real model (filling its cache as usual) that records the attention masks it is given and the logits
    it returns for the next token; with a script, those logits are replaced to emit a fixed token per row
    and step."""

    def __init__(self, model, script=None):
        super().__init__()
        self.model, self.script, self.masks, self.logits = model, script, [], []
        self.config, self.dtype = model.config, model.dtype

    def forward(self, attention_mask, **kwargs):
        self.masks.append(attention_mask.clone())
        out = self.model(attention_mask=attention_mask, **kwargs)
        if self.script is not None:
            out.logits[:] = -1e9
            out.logits[torch.arange(out.logits.shape[0]), -1, self.script[:, len(self.masks) - 1]] = 0.0
        self.logits.append(out.logits[:, -1].clone())
        return out


def test_generation_truncates_after_eos_and_masks_the_rest(tokenizer, tiny):
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    model = Recorded(tiny[0], torch.tensor([[5, eos, 7, 8], [5, 6, 7, 8]]))
    prompt_ids, prompt_mask = data.pad([[3, 4, 9], [3, 4]], pad, "left")
    responses, mask = generate(model, prompt_ids, prompt_mask, torch.rand(4, 2), temperature=0.7, eos_id=eos,
                               pad_id=pad)
    assert responses.tolist() == [[5, eos, pad, pad], [5, 6, 7, 8]]
    assert mask.tolist() == [[True, True, False, False], [True] * 4]
    assert model.masks[-1][0, 4:6].tolist() == [1, 0]  # EOS attended to, the PAD after it not


def test_cached_decode_matches_the_uncached_forward(tokenizer, tiny):
    """Each step's logits from the static cache are those of one forward pass over the whole sequence,
    left padding included (positions and masks right)."""
    model, pad = Recorded(tiny[0]), tokenizer.pad_token_id
    prompt_ids, prompt_mask = data.pad([[3, 4, 9, 10], [3, 4], [5]], pad, "left")
    with torch.no_grad():
        responses, response_mask = generate(model, prompt_ids, prompt_mask, torch.rand(12, 3), temperature=0.9,
                                            eos_id=tokenizer.eos_token_id, pad_id=pad, stop_early=False)
        ids, mask = torch.cat([prompt_ids, responses], 1), torch.cat([prompt_mask, response_mask], 1)
        expected = models.logits(tiny[0], ids, mask)[:, prompt_ids.shape[1] - 1:-1]
    torch.testing.assert_close(torch.stack(model.logits, 1)[response_mask], expected[response_mask],
                               atol=1e-5, rtol=1e-5)


def test_kl_shaped_rewards_put_the_score_on_eos_not_pad():
    response_mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)
    kl = torch.full(response_mask.shape, 0.1)
    rewards = ops.kl_shaped_rewards(torch.tensor([2.0, 3.0]), kl, response_mask, kl_coef=0.5)
    assert rewards[0].tolist() == pytest.approx([-0.05, 1.95, 0.0, 0.0])  # score on the EOS, nothing on PAD
    assert rewards[1].tolist() == pytest.approx([-0.05, -0.05, -0.05, 2.95])  # no EOS: the last token


def test_rollout_scores_rows_without_eos_with_the_penalty(tokenizer, tiny):
    from fastrlhf.config import PPOConfig
    policy, value_model = tiny
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    prompts = data.pad([[3, 4, 9], [3, 4, 9, 11]], pad, "left")
    responses = torch.tensor([[5, eos, pad], [5, 6, 7]])
    response_mask = torch.tensor([[1, 1, 0], [1, 1, 1]], dtype=torch.bool)
    config = PPOConfig(missing_eos_penalty=-7.0, normalize_reward=False)
    batch = ppo.score(policy, policy, value_model, value_model, prompts, responses, response_mask, tokenizer,
                      config, None)
    assert batch["scores"][1] == -7.0 and batch["scores"][0] == batch["raw_scores"][0]
    assert (batch["logprobs"] <= 0).all() and (batch["logprobs"][0, 2] == 0)  # masked position: 0
    assert (batch["logprobs"] - batch["ref_logprobs"]).abs().max() == 0


def test_training_logprobs_do_not_depend_on_padding(tokenizer, tiny):
    policy, value_model = tiny
    pad = tokenizer.pad_token_id
    prompt = [3, 4, 9, 11]
    responses = torch.tensor([[5, 6, 7]])
    response_mask = torch.ones_like(responses, dtype=torch.bool)
    out = []
    for extra in (0, 3):
        ids, mask = data.pad([prompt], pad, "left", length=len(prompt) + extra)
        ids, mask = torch.cat([ids, responses], 1), torch.cat([mask, response_mask], 1)
        with torch.no_grad():
            out.append((ppo.response_logprobs(policy, ids, mask, responses, response_mask, 0.7),
                        ppo.response_values(value_model, ids, mask, responses)))
    torch.testing.assert_close(out[0], out[1], atol=1e-5, rtol=1e-5)


def test_sampling_matches_the_training_distribution(tokenizer, tiny):
    """The first sampled token's empirical frequency follows exp(response_logprobs) at the same temperature."""
    policy, _ = tiny
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    n = 2000
    prompt_ids, prompt_mask = data.pad([[3, 4, 9]] * n, pad, "left")
    with torch.no_grad():
        responses, _ = generate(policy, prompt_ids, prompt_mask, torch.rand(1, n), temperature=0.7, eos_id=eos,
                                pad_id=pad)
        logits = models.logits(policy, prompt_ids[:1], prompt_mask[:1])[:, -1]
    expected = torch.softmax(logits / 0.7, -1)[0]
    observed = torch.bincount(responses[:, 0], minlength=expected.numel()).float() / n
    assert (observed - expected).abs().max() < 0.05
