"""Reward model: the SFT backbone with a scalar head, trained on preference pairs with the
Bradley-Terry loss -log sigmoid(r_chosen - r_rejected); the reward is read at the EOS token."""
import json
from pathlib import Path

import torch
import torch.nn.functional as F

from . import data, distributed, models, training

SHOWN = ("loss", "accuracy")
STATS_FILE = "reward_stats.json"  # mean/std of the RM's scores on its training responses


def _scores(model, pairs, pad_id, device):
    ids, mask = data.pair_batch(pairs, pad_id)
    scores = model.score(ids.to(device), mask.to(device))
    return scores[:len(pairs)], scores[len(pairs):]


@torch.no_grad()
def evaluate(model, pairs, pad_id, device, batch_size=256):
    """Pairwise accuracy (chosen scored above rejected) and AUC (any chosen above any rejected)."""
    chosen, rejected = map(torch.cat, zip(*(_scores(model, pairs[i:i + batch_size], pad_id, device)
                                             for i in range(0, len(pairs), batch_size))))
    accuracy = (chosen > rejected).float().mean()
    # AUC = P(score of a random chosen > score of a random rejected), ties counting half (Mann-Whitney U).
    above = (chosen[:, None] > rejected[None, :]).float() + 0.5 * (chosen[:, None] == rejected[None, :]).float()
    return {"accuracy": accuracy.item(), "auc": above.mean().item(), "margin": (chosen - rejected).mean().item(),
            "mean": torch.cat([chosen, rejected]).mean().item(), "std": torch.cat([chosen, rejected]).std().item()}


def load_stats(path):
    stats = Path(path) / STATS_FILE
    return json.loads(stats.read_text()) if stats.exists() else None


def train(config):
    device = training.setup(config)
    loop = training.Loop(config, "rm", SHOWN)
    tokenizer = models.load_tokenizer(config.model)
    pairs = data.preference_pairs(config.data, tokenizer, config.max_len)
    model = models.load_value_model(loop.init_path("model", config.model), tokenizer, config.dtype, device)
    trained = distributed.wrap(model, config.fsdp)
    optimizer, scheduler = training.optimizer(model.parameters(), config)
    guard = training.Guard(config.max_bad_steps, "reward-model")
    for step in loop.steps(optimizer, scheduler, guard):
        batch = [pairs[i] for i in training.batch_rows(step, config.batch_size, len(pairs), config.seed)]
        ids, mask = (t.to(device) for t in data.pair_batch(distributed.my_rows(batch), tokenizer.pad_token_id))
        chosen, rejected = models.at_last_token(trained(ids, mask), mask).chunk(2)
        loss = -F.logsigmoid(chosen - rejected).mean()  # every rank holds as many pairs: DDP's mean is global
        guard.update(loss, optimizer, model.parameters(), config.max_grad_norm)
        accuracy = (chosen > rejected).float().mean()
        loop.end_step(step, {"loss": distributed.average(loss), "accuracy": distributed.average(accuracy)},
                      {"model": model}, tokenizer)
    report = {"train": evaluate(model, pairs[:1024], tokenizer.pad_token_id, device)}
    if config.eval_data:
        heldout = data.preference_pairs(config.eval_data, tokenizer, config.max_len)
        report["heldout"] = evaluate(model, heldout, tokenizer.pad_token_id, device)
    stats = json.dumps({"mean": report["train"]["mean"], "std": report["train"]["std"]}) + "\n"
    final = loop.finish(model, tokenizer, ("loss", "accuracy", "lr"), files={STATS_FILE: stats})
    if distributed.is_main():
        (loop.dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    return final, report
