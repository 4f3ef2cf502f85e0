"""Reward model: the SFT backbone with a scalar head, trained on preference pairs with the
Bradley-Terry loss -log sigmoid(r_chosen - r_rejected); the reward is read at the EOS token."""
import json
from pathlib import Path

import torch
import torch.nn.functional as F

from . import data, distributed, models, training

SHOWN = ("loss", "accuracy")
STATS_FILE = "reward_stats.json"  # mean/std of the RM's scores on its training responses
REPORT_FILE = "report.json"  # in the stage directory: accuracy and AUC on the training and held-out pairs


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


@training.stage("rm", SHOWN)
def train(config, loop):
    tokenizer = models.load_tokenizer(config.model)
    pairs = data.preference_pairs(config.data, tokenizer, config.max_len)
    heldout = data.preference_pairs(config.eval_data, tokenizer, config.max_len) if config.eval_data else None
    model = models.load_value_model(loop.init_path("model", config.model), tokenizer, config.dtype, loop.device)
    trained = distributed.wrap(model, config.fsdp)
    optimizer = loop.optimizer_for(model.parameters())
    for step in loop.steps():
        batch = [pairs[i] for i in training.batch_rows(step, config.batch_size, len(pairs), config.seed)]
        ids, mask = (t.to(loop.device) for t in data.pair_batch(distributed.my_rows(batch), tokenizer.pad_token_id))
        chosen, rejected = models.at_last_token(trained(ids, mask), mask).chunk(2)
        loss = -F.logsigmoid(chosen - rejected).mean()  # every rank holds as many pairs: DDP's mean is global
        loop.guard.update(loss, optimizer, model.parameters(), config.max_grad_norm)
        accuracy = (chosen > rejected).float().mean()
        loop.end_step(step, {"loss": distributed.average(loss), "accuracy": distributed.average(accuracy)},
                      {"model": model}, tokenizer)
    report = {"train": evaluate(model, pairs[:1024], tokenizer.pad_token_id, loop.device)}
    if heldout:
        report["heldout"] = evaluate(model, heldout, tokenizer.pad_token_id, loop.device)
    stats = json.dumps({"mean": report["train"]["mean"], "std": report["train"]["std"]}) + "\n"
    if distributed.is_main():  # before final: a finished stage always has its report
        (loop.dir / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")
        print("rm: pair accuracy " + ", ".join(f"{r['accuracy']:.3f} ({name})" for name, r in report.items())
              + f"; AUC and margins in {loop.dir / REPORT_FILE}")
    return loop.finish(model, tokenizer, ("loss", "accuracy", "lr"), files={STATS_FILE: stats})
