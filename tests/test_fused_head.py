"""The trainer's log-probs go through ops.linear_logprobs from the last hidden states (no [B, T, V]
logits), and fall back to the logits for heads the op does not compute."""
import pytest
import torch
import transformers
from helpers import assert_close
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import AutoModelForCausalLM, LlamaConfig

from fastrlhf import models, ops


def tiny_policy(vocab, tie=True):
    config = LlamaConfig(vocab_size=vocab, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128,
                         tie_word_embeddings=tie)
    return models.eval_mode(AutoModelForCausalLM.from_config(config))


def batch(vocab, rows=2, prompt=5, response=6):
    ids = torch.randint(0, vocab, (rows, prompt + response))
    mask = torch.ones_like(ids, dtype=torch.bool)
    mask[0, :2] = False  # left padding
    response_mask = torch.ones(rows, response, dtype=torch.bool)
    response_mask[1, 4:] = False
    return ids, mask, ids[:, prompt:], response_mask


def logits_path(policy, ids, mask, responses, response_mask, temperature):
    prompt_len = ids.shape[1] - responses.shape[1]
    predicting = models.logits(policy, ids, mask)[:, prompt_len - 1:-1]
    labels = responses.masked_fill(~response_mask, -100)
    return ops.token_logprobs(predicting, labels, temperature=temperature, return_entropy=True)


HEADS = {"llama": ("LlamaConfig", {}), "qwen2": ("Qwen2Config", {}),
         "gemma2-softcap": ("Gemma2Config", dict(final_logit_softcapping=3.0, head_dim=8)),
         "cohere-logit-scale": ("CohereConfig", dict(logit_scale=0.3)),
         "granite-logits-scaling": ("GraniteConfig", dict(logits_scaling=3.0))}


@pytest.mark.parametrize("architecture", HEADS)
def test_fused_path_matches_logits_path(architecture):
    """Values and every parameter's gradient, for heads with a softcap, a logit scale or a divisor too."""
    name, extra = HEADS[architecture]
    config = getattr(transformers, name)(vocab_size=97, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128,
                                         pad_token_id=0, bos_token_id=1, eos_token_id=2, **extra)
    policy = models.eval_mode(AutoModelForCausalLM.from_config(config))
    ids, mask, responses, response_mask = batch(97)
    fused = models.response_logprobs(policy, ids, mask, responses, response_mask, 0.7, entropy=True)
    assert models._fused_head(policy) is not None
    grads = torch.autograd.grad(fused[0].sum() + fused[1].sum(), list(policy.parameters()))
    plain = logits_path(policy, ids, mask, responses, response_mask, 0.7)
    plain_grads = torch.autograd.grad(plain[0].sum() + plain[1].sum(), list(policy.parameters()))
    for got, want in zip(fused, plain):
        assert_close(got, want, atol=1e-5, what="log-probs")
    for got, want in zip(grads, plain_grads):
        assert_close(got, want, atol=1e-5 * (1 + want.abs().max().item()), what="grad")


def test_other_heads_fall_back_with_a_notice(capsys):
    policy = tiny_policy(31, tie=False)
    policy.lm_head = torch.nn.Sequential(policy.lm_head)  # not a plain nn.Linear
    ids, mask, responses, response_mask = batch(31)
    got = models.response_logprobs(policy, ids, mask, responses, response_mask, 1.0)
    assert "LlamaForCausalLM" in capsys.readouterr().out
    assert_close(got, logits_path(policy, ids, mask, responses, response_mask, 1.0)[0], atol=0, what="log-probs")


class LargestTensor(TorchDispatchMode):
    """The most elements of any tensor an op makes while active (forward and backward)."""

    def __init__(self):
        super().__init__()
        self.largest, self.ops = 0, set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.ops.add(func.name())
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def ppo_update_largest_tensor(policy, reference, rows=4, prompt=4, response=64):
    """Score (policy and reference log-probs, no grad) then one policy-gradient update of a batch."""
    vocab = policy.config.vocab_size
    ids, mask, responses, response_mask = batch(vocab, rows, prompt, response)
    with LargestTensor() as seen:
        with torch.no_grad():
            old = models.response_logprobs(policy, ids, mask, responses, response_mask, 1.0, entropy=True)[0]
            ref = models.response_logprobs(reference, ids, mask, responses, response_mask, 1.0)
        logprobs = models.response_logprobs(policy, ids, mask, responses, response_mask, 1.0)
        loss, _ = ops.ppo_policy_loss(logprobs, old, torch.randn(rows, response), response_mask)
        (loss + 0.1 * ops.kl_penalty(logprobs, ref).mean()).backward()
    return seen, rows * response * vocab


def test_ppo_update_holds_no_batch_by_vocab_tensor():
    """V = 151936 (Qwen2.5's vocabulary): no tensor of [B, T, V] elements is made by the update. Taking
    the logits path (as for a head the op does not cover) makes one, so the measure can fail."""
    torch.manual_seed(0)
    policy, reference = tiny_policy(151936), tiny_policy(151936)
    seen, batch_by_vocab = ppo_update_largest_tensor(policy, reference)
    assert "fastrlhf::linear_logprobs_backward" in seen.ops
    assert seen.largest < batch_by_vocab / 2, (seen.largest, batch_by_vocab)
    policy._fastrlhf_head = None  # the logits path
    seen, batch_by_vocab = ppo_update_largest_tensor(policy, reference)
    assert seen.largest >= batch_by_vocab
