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


def random_order(n, seed):
    """For each of n pairs, whether the chosen response is shown first (a seeded coin flip)."""
    return torch.rand(n, generator=torch.Generator().manual_seed(seed)) >= 0.5


def pair_metrics(chosen, rejected, first_is_chosen, margins=None):
    """The reward model as a classifier of pairs. Each pair is shown in a random order (`first_is_chosen`,
    from `random_order`) and the question is "is the first response the preferred one?"; the model answers
    yes when P(first preferred) = sigmoid(r_first - r_second) > 0.5, that is when r_first > r_second.
      precision, recall   of the "yes" answers: TP / (TP + FP), TP / (TP + FN) (0 when undefined); F1 = 2PR / (P + R)
      roc_auc             P(r_first - r_second is larger for a random "yes" pair than for a random "no" pair),
                          ties counting half (Mann-Whitney U); None when the pairs are all of one class
      accuracy_by_margin  for pairs from K-way rankings (margins: the rank difference of each pair, None for
                          {chosen, rejected} rows): {margin: {accuracy, pairs}}, accuracy = P(r_chosen > r_rejected)
    """
    difference = torch.where(first_is_chosen, chosen - rejected, rejected - chosen).double()
    said_yes = difference > 0
    tp = (said_yes & first_is_chosen).sum().item()
    precision = tp / max(said_yes.sum().item(), 1)
    recall = tp / max(first_is_chosen.sum().item(), 1)
    out = {"pairs": len(chosen), "precision": precision, "recall": recall,
           "f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
           "roc_auc": roc_auc(difference, first_is_chosen)}
    if margins is not None and any(m is not None for m in margins):
        correct = (chosen > rejected).tolist()
        by_margin = {}
        for margin, ok in zip(margins, correct):
            if margin is not None:
                by_margin.setdefault(margin, []).append(ok)
        out["accuracy_by_margin"] = {str(m): {"accuracy": sum(v) / len(v), "pairs": len(v)}
                                     for m, v in sorted(by_margin.items())}
    return out


def roc_auc(scores, labels):
    """Area under the ROC curve of `scores` for the boolean `labels`, from average ranks (ties count half)."""
    positives, negatives = labels.sum().item(), (~labels).sum().item()
    if not positives or not negatives:
        return None
    _, inverse, counts = torch.unique(scores, return_inverse=True, return_counts=True)
    ends = counts.cumsum(0).double()
    average_rank = ends - (counts.double() - 1) / 2  # 1-based rank of each distinct score, ties averaged
    rank_sum = average_rank[inverse][labels].sum().item()
    return (rank_sum - positives * (positives + 1) / 2) / (positives * negatives)


@torch.no_grad()
def evaluate(model, pairs, pad_id, device, batch_size=256, margins=None, seed=0):
    """Pairwise accuracy (chosen scored above rejected), the mean score margin, and `pair_metrics`."""
    chosen, rejected = map(torch.cat, zip(*(_scores(model, pairs[i:i + batch_size], pad_id, device)
                                             for i in range(0, len(pairs), batch_size))))
    return {"accuracy": (chosen > rejected).float().mean().item(), "margin": (chosen - rejected).mean().item(),
            "mean": torch.cat([chosen, rejected]).mean().item(), "std": torch.cat([chosen, rejected]).std().item(),
            **pair_metrics(chosen.cpu(), rejected.cpu(), random_order(len(chosen), seed), margins)}


def format_metrics(metrics, what="held-out pairs"):
    """Lines for a report."""
    auc = "-" if metrics["roc_auc"] is None else f"{metrics['roc_auc']:.3f}"
    lines = [f"reward model on {metrics['pairs']} {what}: accuracy {100 * metrics['accuracy']:.1f}%",
             f"  is the first preferred? (pairs in random order; yes when sigmoid(r1 - r2) > 0.5): precision "
             f"{metrics['precision']:.3f}, recall {metrics['recall']:.3f}, F1 {metrics['f1']:.3f}, ROC AUC {auc}"]
    if "accuracy_by_margin" in metrics:
        lines.append("  accuracy by rank margin: " + ", ".join(
            f"{m}: {100 * v['accuracy']:.1f}% ({v['pairs']} pairs)" for m, v in metrics["accuracy_by_margin"].items()))
    return "\n".join(lines)


def load_stats(path):
    stats = Path(path) / STATS_FILE
    return json.loads(stats.read_text()) if stats.exists() else None


@training.stage("rm", SHOWN)
def train(config, loop):
    tokenizer = models.load_tokenizer(config.model)
    pairs = data.preference_pairs(config.data, tokenizer, config.max_len)
    heldout_rows = data.load_rows(config.eval_data) if config.eval_data else None
    heldout = data.preference_pairs(config.eval_data, tokenizer, config.max_len, rows=heldout_rows) \
        if heldout_rows else None
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
        report["heldout"] = evaluate(model, heldout, tokenizer.pad_token_id, loop.device,
                                     margins=data.pair_margins(heldout_rows), seed=config.seed)
    stats = json.dumps({"mean": report["train"]["mean"], "std": report["train"]["std"]}) + "\n"
    if distributed.is_main():  # before final: a finished stage always has its report
        (loop.dir / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")
        print("rm: pair accuracy " + ", ".join(f"{r['accuracy']:.3f} ({name})" for name, r in report.items())
              + f"; AUC and margins in {loop.dir / REPORT_FILE}")
    return loop.finish(model, tokenizer, ("loss", "accuracy", "lr"), files={STATS_FILE: stats})
