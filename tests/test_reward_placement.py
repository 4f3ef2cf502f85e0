"""The reward is read at the EOS token: right padding, left padding, post-EOS padding, rows without
EOS; padding never changes a logprob, a value or a score. (Sampling and its truncation after EOS:
test_rollout.py.)"""

import pytest
import torch

from fastrlhf import data, models, ppo
from fastrlhf.training import ops


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
    torch.manual_seed(1)
    reference = models.load_policy("demo", tokenizer)  # other weights than the policy
    config = PPOConfig(missing_eos_penalty=-7.0, normalize_reward=False)
    batch = ppo.score(policy, reference, value_model, value_model, prompts, responses, response_mask, tokenizer,
                      config, None)
    assert batch["scores"][1] == -7.0 and batch["scores"][0] == batch["raw_scores"][0]
    assert (batch["logprobs"] < 0)[response_mask].all() and (batch["logprobs"][0, 2] == 0)  # masked position: 0
    ids, mask = torch.cat([prompts[0], responses], 1), torch.cat([prompts[1], response_mask], 1)
    with torch.no_grad():
        for key, model in (("logprobs", policy), ("ref_logprobs", reference)):
            expected = models.response_logprobs(model, ids, mask, responses, response_mask, config.temperature)
            torch.testing.assert_close(batch[key], expected, atol=0, rtol=0)
    assert (batch["logprobs"] - batch["ref_logprobs"])[response_mask].abs().min() > 1e-4


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
            out.append((models.response_logprobs(policy, ids, mask, responses, response_mask, 0.7),
                        ppo.response_values(value_model, ids, mask, responses)))
    torch.testing.assert_close(out[0], out[1], atol=1e-5, rtol=1e-5)
