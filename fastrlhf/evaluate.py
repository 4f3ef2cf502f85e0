"""Scoring policies on prompts: reward-model score, gold score (where a labeler exists), KL to a
reference, response length and EOS rate, and the win rate of policy A over policy B; and scoring a
reward model on preference rows (reward_model.pair_metrics)."""
import json
import time
from pathlib import Path

import torch

from . import data, distributed, metrics, models, training
from . import reward_model as rm
from .config import check
from .rollout import Sampler

LABELERS = ("demo",)


def labeler(name):
    """gold(prompt_text, response_text, finished) -> float, or None."""
    if not name:
        return None
    if name != "demo":
        raise ValueError(f"labeler must be one of {LABELERS} or empty, got {name!r}")
    from .demo.task import gold_score
    return gold_score


def sample(sampler, prompts, tokenizer, *, temperature, max_new_tokens, seed, device):
    """[(response ids, response mask, prompt ids, prompt mask)] per batch of sampler.max_batch_size prompts
    (token id lists). Row i draws with uniforms of row i from `seed`, whatever the batch size."""
    uniforms = torch.rand(len(prompts), max_new_tokens, generator=torch.Generator().manual_seed(seed))
    batches = []
    for start in range(0, len(prompts), sampler.max_batch_size):
        rows = slice(start, start + sampler.max_batch_size)
        prompt_ids, prompt_mask = (t.to(device) for t in data.pad(prompts[rows], tokenizer.pad_token_id, "left"))
        out = sampler.generate((prompt_ids, prompt_mask), max_new_tokens=max_new_tokens, temperature=temperature,
                               eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                               uniforms=uniforms[rows])
        batches.append((out.response_ids, out.response_mask, prompt_ids, prompt_mask))
    return batches


def decode(tokenizer, responses, mask):
    """(text without EOS, ended with EOS) per row."""
    out = []
    for row, row_mask in zip(responses.tolist(), mask.tolist()):
        tokens = [t for t, m in zip(row, row_mask) if m]
        finished = bool(tokens) and tokens[-1] == tokenizer.eos_token_id
        out.append((tokenizer.decode(tokens[:-1] if finished else tokens, skip_special_tokens=True), finished))
    return out


def sampler_for(policy, prompts, batch_size, max_new_tokens):
    """A Sampler sized for these prompts (token id lists), batch_size of them at a time."""
    return Sampler(policy, max_batch_size=min(batch_size, len(prompts)),
                   max_length=max(map(len, prompts)) + max_new_tokens)


@torch.no_grad()
def score_policy(sampler, prompt_texts, prompts, tokenizer, config, device, reward_model=None, reference=None,
                 gold=None):
    """Per-sample tensors of sampler.model's responses: length, eos, and rm / kl / gold when their scorer is given."""
    out = {"length": [], "eos": [], "rm": [], "kl": [], "gold": [], "text": []}
    policy = sampler.model
    batches = sample(sampler, prompts, tokenizer, temperature=config.temperature,
                     max_new_tokens=config.max_new_tokens, seed=config.seed, device=device)
    offset = 0
    for responses, mask, prompt_ids, prompt_mask in batches:
        ids, attention = torch.cat([prompt_ids, responses], 1), torch.cat([prompt_mask, mask], 1)
        texts = decode(tokenizer, responses, mask)
        out["length"].append(mask.sum(-1).float())
        out["eos"].append(torch.tensor([f for _, f in texts], dtype=torch.float))
        if reward_model is not None:
            out["rm"].append(reward_model.score(ids, attention))
        if reference is not None:
            logprobs = models.response_logprobs(policy, ids, attention, responses, mask, config.temperature)
            ref_logprobs = models.response_logprobs(reference, ids, attention, responses, mask, config.temperature)
            out["kl"].append((logprobs - ref_logprobs).sum(-1))
        if gold is not None:
            rows = prompt_texts[offset:offset + len(texts)]
            out["gold"].append(torch.tensor([gold(p, t, f) for p, (t, f) in zip(rows, texts)]))
        out["text"] += [t for t, _ in texts]
        offset += len(texts)
    return {k: (torch.cat(v).cpu() if k != "text" else v) for k, v in out.items() if v}


def heldout_log(config, tokenizer, device, reward_model, reference, directory):
    """f(policy, step) for a training loop: the policy's mean RM score, gold score (config.eval_labeler) and KL to
    the reference on the held-out prompts config.eval_prompts, one line {"step": updates so far, ...} of
    <directory>/eval.jsonl. Every call samples with the same seed, so its points differ by the policy only."""
    rows = data.load_rows(config.eval_prompts)
    prompts = data.prompts(config.eval_prompts, tokenizer, config.max_prompt_len, rows=rows)
    texts, gold, path = [row["prompt"] for row in rows], labeler(config.eval_labeler), Path(directory) / "eval.jsonl"
    samplers = {}  # one per policy object: its buffers (and CUDA graphs) are made once

    def log(policy, step):
        started = time.perf_counter()
        if id(policy) not in samplers:
            samplers[id(policy)] = sampler_for(policy, prompts, config.batch_size, config.max_new_tokens)
        scores = score_policy(samplers[id(policy)], texts, prompts, tokenizer, config, device, reward_model,
                              reference, gold)
        record = {"step": step, **{k: v.mean().item() for k, v in scores.items() if k != "text"},
                  "seconds": time.perf_counter() - started}
        if distributed.is_main():
            metrics.keep_before(path, step)
            with path.open("a") as f:
                f.write(json.dumps(record) + "\n")
        return record

    return log


def win_rate(a, b):
    """P(a > b) over paired samples, ties counting half."""
    return ((a > b).float() + 0.5 * (a == b).float()).mean().item()


def evaluate(config):
    """{policy name: {metric: mean}} plus the win rate of the policy over the baseline, and the reward
    model's metrics on preference rows when given."""
    device = training.setup(check(config))
    tokenizer = models.load_tokenizer(config.policy or config.reward_model)
    reward_model = models.load_value_model(config.reward_model, tokenizer, config.dtype, device) \
        if config.reward_model else None
    report = _score_policies(config, tokenizer, reward_model, device) if config.policy else {}
    if config.preferences:
        rows = data.load_rows(config.preferences)
        pairs = data.preference_pairs(config.preferences, tokenizer, config.max_prompt_len + config.max_new_tokens,
                                      rows=rows)
        report["reward_model"] = rm.evaluate(reward_model, pairs, tokenizer.pad_token_id, device,
                                             margins=data.pair_margins(rows), seed=config.seed)
    return report


def _score_policies(config, tokenizer, reward_model, device):
    rows = data.load_rows(config.prompts)[:config.num_prompts]
    prompts = data.prompts(config.prompts, tokenizer, config.max_prompt_len, rows=rows)
    texts = [r["prompt"] for r in rows]
    reference_path = config.reference or config.baseline
    reference = models.load_policy(reference_path, tokenizer, config.dtype, device) if reference_path else None
    gold = labeler(config.labeler)
    results = {}
    for name, path in (("policy", config.policy), ("baseline", config.baseline)):
        if path:
            sampler = sampler_for(models.load_policy(path, tokenizer, config.dtype, device), prompts, config.batch_size,
                                  config.max_new_tokens)
            results[name] = score_policy(sampler, texts, prompts, tokenizer, config, device, reward_model, reference,
                                         gold)
    report = {name: {k: v.mean().item() for k, v in r.items() if k != "text"} for name, r in results.items()}
    if "baseline" in results:
        judge = "gold" if gold else "rm"
        if judge in results["policy"]:
            report["win_rate"] = {"judge": judge, "value": win_rate(results["policy"][judge], results["baseline"][judge])}
    report["examples"] = [{"prompt": p, **{n: r["text"][i] for n, r in results.items()}}
                          for i, p in enumerate(texts[:3])]
    return report


NAMES = {"gold": "gold score (labeler)", "rm": "reward-model score", "kl": "KL to reference (nats/seq)",
         "length": "response length (tokens)", "eos": "EOS rate"}


def format_report(report, policy_label="policy", baseline_label="baseline"):
    """A plain-text table."""
    lines = [rm.format_metrics(report["reward_model"])] if "reward_model" in report else []
    columns = [n for n in ("baseline", "policy") if n in report]
    labels = {"policy": policy_label, "baseline": baseline_label}
    if columns:
        lines.append(f"{'':28}" + "".join(f"{labels[c]:>14}" for c in columns))
        for key, title in NAMES.items():
            if key in report[columns[0]]:
                lines.append(f"{title:28}" + "".join(f"{report[c][key]:>14.3f}" for c in columns))
    if "win_rate" in report:
        w = report["win_rate"]
        lines.append(f"win rate of {policy_label} over {baseline_label} ({w['judge']} judge): {100 * w['value']:.1f}%")
    for example in report.get("examples", []):
        lines.append(f"  prompt: {example['prompt']}")
        for c in columns:
            lines.append(f"    {labels[c]:>8}: {example[c]}")
    return "\n".join(lines)
