"""Iterated online RLHF: rounds of fresh comparisons on the current policy -> reward model -> PPO.

A reward model is trustworthy only near the responses it was trained on, and PPO walks away from them
(Gao et al. 2022: the gold score rises then falls with KL while the proxy keeps rising). So each round
has the labeler rank samples of the current policy, adds those comparisons to all earlier ones,
continues the reward model on them, and runs PPO from the current policy (and the last round's critic);
the KL reference stays the SFT model. Round r writes under <output_dir>/<run>/round-<r>/:

  candidates.jsonl           K samples per prompt, saved before labelling {id, prompt, responses, finished, ...}
  preferences.jsonl          their rankings {prompt, responses, ranking} on training prompts; comparisons.jsonl
                             holds those of every round so far: the reward model's training data
  heldout_preferences.jsonl  rankings on held-out prompts: the newest pairs the reward model is tested on
  rm/, ppo/                  the stages; ppo/eval.jsonl is the round's over-optimisation curve, ppo/critic the critic
  report.json                the round's line

and <run>/over_optimisation.png plots gold and proxy score against KL and steps, a curve per round. A killed
run continues with --resume true: finished rounds and stages are skipped, a stage resumes from its checkpoint.

A labeler maps a round's candidate rows {id, prompt, responses, finished, policies} to one ranking per row
(ranking[i] is the rank of responses[i], 1 = best, tied responses share the better rank; None leaves the
row unjudged). `make_labeler` holds the list: demo (the embedded task's rule), command:<program> and human
(annotators, through the database of `fastrlhf annotate`).
"""
import contextlib
import dataclasses
import json
import random
import shlex
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import torch

from . import checkpoint, data, distributed, evaluate, metrics, models, pipeline, ppo, reward_model, sft, training
from .annotate import db as feedback_db
from .annotate import export
from .config import Common, EvalConfig, IterateConfig, Rounds, check
from .demo import task


class LabelerError(data.DataError):
    """A labeler's output that cannot be used; `row` (0-based) is the row at fault, if one is."""

    def __init__(self, message, row=None):
        super().__init__(message)
        self.row = row


def demo_labeler(rows):
    return [task.rank(row["prompt"], row["responses"], row["finished"]) for row in rows]


def command_labeler(program):
    """Runs `program` once per round: candidate rows {id, prompt, responses, finished} as JSONL on its stdin
    (blind, as annotators are: not which policy wrote what); on its stdout one line per row, in order,
    holding the row's ranking as a JSON list (or {"ranking": [...], ...}, or null)."""
    argv = shlex.split(program)

    def label(rows):
        blind = [{k: row[k] for k in ("id", "prompt", "responses", "finished")} for row in rows]
        try:
            done = subprocess.run(argv, input="".join(json.dumps(row) + "\n" for row in blind),
                                  stdout=subprocess.PIPE, text=True)
        except OSError as error:
            raise LabelerError(f"labeler {program!r} could not be started: {error}") from error
        if done.returncode:
            raise LabelerError(f"labeler {program!r} exited with status {done.returncode} (its stderr is above)")
        lines = [line for line in done.stdout.splitlines() if line.strip()]
        if len(lines) != len(rows):
            raise LabelerError(f"labeler {program!r} wrote {len(lines)} rankings for {len(rows)} rows")
        rankings = []
        for i, line in enumerate(lines):
            try:
                value = json.loads(line)
            except json.JSONDecodeError as error:
                raise LabelerError(f"labeler {program!r} wrote {line[:80]!r}, which is not JSON ({error})", i) from None
            rankings.append(value.get("ranking") if isinstance(value, dict) else value)
        return rankings

    return label


def human_labeler(config):
    """Pushes each round's rows into the annotation database `config.human_db` as ranking items (each text
    once; a row whose responses are all one text is not pushed and ranks them tied), where annotators rank
    them on `fastrlhf annotate serve --db <human_db>`, and waits until `config.human_judgements` judgements
    exist (0: every item judged `config.human_annotators` times; a judgement is a ranking, "all bad" or a
    skip, and an item counts at most human_annotators of them). Then it closes the round's items (no
    longer offered) and returns, for each row, its judgements combined:

      ranked    the ranks the annotator gave
      all bad   every response tied: no pair
      skipped   nothing: a row whose judgements are all skips is left unjudged (None)

    Several annotators' rankings combine by rank sum (Borda): responses ordered by the sum of their ranks,
    equal sums tied, so a pair the annotators order in opposite ways gives no pair. Duplicate texts take
    their text's rank. Pushing is idempotent by the row ids (the items' external ids): called again with
    the same rows, as a resumed run does, it finds its items and their judgements and waits on."""

    def label(rows):
        with _human_db(config) as store:
            return _human_rankings(store, rows, config)

    with _human_db(config):  # a database that cannot be opened fails now, not after a round of training
        return label


@contextlib.contextmanager
def _human_db(config):
    """The annotation database, opened (and created, with its directory); its errors are the labeler's."""
    try:
        Path(config.human_db).expanduser().parent.mkdir(parents=True, exist_ok=True)
        store = feedback_db.Store(Path(config.human_db).expanduser())
    except (OSError, sqlite3.Error) as error:
        raise LabelerError(f"human_db {config.human_db}: {error}") from error
    try:
        yield store
    except sqlite3.Error as error:
        raise LabelerError(f"human_db {config.human_db}: {error}") from error
    finally:
        store.close()


def _human_rankings(store, rows, config):
    texts = [list(dict.fromkeys(row["responses"])) for row in rows]
    pushed = [i for i, t in enumerate(texts) if len(t) > 1]
    records = []
    for i in pushed:
        first = [rows[i]["responses"].index(t) for t in texts[i]]  # a text's policy: its first writer's
        records.append({"external_id": rows[i]["id"], "prompt": rows[i]["prompt"], "responses": texts[i],
                        "policies": [rows[i]["policies"][j] for j in first],
                        "finished": [rows[i]["finished"][j] for j in first], "annotations": []})
    random.Random(0).shuffle(records)  # served in this order: a partial count covers training and held-out rows
    store.import_judgements(records, "iterate")
    ids = [rows[i]["id"] for i in pushed]
    items = []
    for i, (item, responses, _) in zip(pushed, store.items_by_external_id(ids)):
        if item["prompt"] != feedback_db.prompt_key(rows[i]["prompt"]) or [r["text"] for r in responses] != texts[i]:
            raise LabelerError(f"{config.human_db} holds another item of this id (a run started afresh over an "
                               "earlier one of the same name?): continue that run with --resume true, or use "
                               "another run name or human_db", i)
        items.append(item["id"])
    store.set_closed(items, False)  # open again if an interrupted call closed them
    _wait_for_judgements(store, ids, config)
    store.set_closed(items, True)
    found = store.items_by_external_id(ids)  # with any judgement saved since (of an item open on a page)
    rankings = [None if len(t) > 1 else [1] * len(row["responses"]) for row, t in zip(rows, texts)]
    for i, (_, responses, judgements) in zip(pushed, found):
        given = [r for j in judgements if (r := export.judgement_ranking(j, len(responses))) is not None]
        if given:
            position = {r["text"]: n for n, r in enumerate(responses)}
            totals = [sum(ranks[position[t]] for ranks in given) for t in rows[i]["responses"]]
            rankings[i] = [1 + sum(other < total for other in totals) for total in totals]
    return rankings


def _wait_for_judgements(store, ids, config):
    """Polls the database until the items `ids` have the judgements the round waits for, showing the count
    on one line. Ctrl-C stops the run; --resume true waits on."""
    most = len(ids) * config.human_annotators
    needed = min(config.human_judgements, most) if config.human_judgements else most
    print(f"human labeler: {len(ids)} items in {config.human_db}, ranked on `fastrlhf annotate serve --db "
          f"{config.human_db}`; waiting for {needed} judgements", flush=True)
    tty, shown = sys.stdout.isatty(), None
    try:
        while True:
            found = store.items_by_external_id(ids)
            judged = sum(min(len(judgements), config.human_annotators) for _, _, judgements in found)
            if judged != shown:  # on a terminal, one line rewritten in place
                line = f"human labeler: {judged}/{needed} judgements"
                print("\r" + line if tty else line, end="" if tty else "\n", flush=True)
                shown = judged
            if judged >= needed:
                return
            time.sleep(config.human_poll_seconds)
    finally:
        if tty:
            print(flush=True)


def make_labeler(config):
    """labeler(rows) -> rankings, from config.labeler."""
    name = config.labeler
    if name == "demo":
        return demo_labeler
    if name == "human":
        return human_labeler(config)
    if name.startswith("command:") and name.removeprefix("command:").strip():
        return command_labeler(name.removeprefix("command:"))
    raise LabelerError(f"labeler must be demo, human or command:<program>, got {name!r}")


def is_ranking(ranking, k):
    """K integer ranks, each 1 + the number of better responses (a permutation of 1..K when nothing ties)."""
    return (isinstance(ranking, list) and len(ranking) == k and all(type(r) is int for r in ranking)
            and all(r == 1 + sum(other < r for other in ranking) for r in ranking))


def rank(labeler, rows, round):
    """The labeler's rankings of `rows`, checked: every error names the round and, where it is one row's, the row."""
    try:
        rankings = labeler([{k: row[k] for k in ("id", "prompt", "responses", "finished", "policies")}
                            for row in rows])
        if not isinstance(rankings, list) or len(rankings) != len(rows):
            raise LabelerError(f"expected a list of {len(rows)} rankings, one per row, got {str(rankings)[:80]}")
        for i, (row, ranking) in enumerate(zip(rows, rankings)):
            k = len(row["responses"])
            if ranking is not None and not is_ranking(ranking, k):
                raise LabelerError(f"expected the ranks of its {k} responses: a permutation of 1..{k} (1 = best; "
                                   f"tied responses share the better rank, as [1, 1, 3]) or null, got {ranking!r}", i)
    except LabelerError as error:
        row = f", row {error.row + 1} (id {rows[error.row]['id']})" if error.row is not None else ""
        raise LabelerError(f"round {round}{row}: {error}", error.row) from None
    return rankings


class Round:
    """Paths and settings of round r."""

    def __init__(self, config, r):
        self.r, self.dir = r, Path(config.output_dir) / config.run / f"round-{r}"
        self.seed = config.seed + 1000 * (r - 1)
        self.candidates, self.report = self.dir / "candidates.jsonl", self.dir / "report.json"
        self.preferences, self.comparisons = self.dir / "preferences.jsonl", self.dir / "comparisons.jsonl"
        self.heldout_preferences = self.dir / "heldout_preferences.jsonl"
        self.rm, self.policy, self.critic = (self.dir / "rm" / "final", self.dir / "ppo" / "final",
                                             self.dir / "ppo" / "critic")

    def stage(self, config, name, **fields):
        """The config of this round's `name` stage: written under round-<r>/, its data order seeded by round."""
        return dataclasses.replace(config.stage(name), output_dir=str(self.dir.parent), run=self.dir.name,
                                   seed=self.seed, **fields)


def collect(config, rnd, labeler, policy, previous, train_prompts, heldout_prompts):
    """Samples candidates of the current policy (and of the previous one, with compare_previous), has them
    ranked, writes the round's preferences. Candidates are saved first: a resumed round ranks the same ones."""
    if not (config.resume and rnd.candidates.exists()):
        prompts, half = train_prompts + heldout_prompts, config.candidates // 2
        sources = [(policy, config.candidates - half), (previous, half)] if config.compare_previous and previous \
            else [(policy, config.candidates)]
        samples = [pipeline.sample_candidates(path, prompts, k, config, 10 * rnd.seed + j)
                   for j, (path, k) in enumerate(sources)]
        names = [_name(path) for path, k in sources for _ in range(k)]
        rows = [{"id": f"{config.run}/round-{rnd.r}/{i}", "prompt": prompt,
                 "responses": [t for s in samples for t in s[i][0]], "finished": [f for s in samples for f in s[i][1]],
                 "heldout": i >= len(train_prompts), "policies": names} for i, prompt in enumerate(prompts)]
        pipeline._write_jsonl(rnd.candidates, rows)
    rows = data.load_rows(str(rnd.candidates))
    rankings = rank(labeler, rows, rnd.r)
    for name, heldout in (("training", False), ("held-out", True)):  # checked before anything is written
        if not any(ranking and len(set(ranking)) > 1
                   for row, ranking in zip(rows, rankings) if row["heldout"] == heldout):
            raise LabelerError(f"round {rnd.r}: the rankings give no pair on the {name} prompts (each row unjudged "
                               "or all tied), and the reward model needs both; have more ranked (labeler human: "
                               "raise human_judgements), then --resume true")
    for path, heldout in ((rnd.preferences, False), (rnd.heldout_preferences, True)):
        pipeline._write_jsonl(path, [{"prompt": row["prompt"], "responses": row["responses"], "ranking": ranking}
                                     for row, ranking in zip(rows, rankings)
                                     if row["heldout"] == heldout and ranking is not None])


def _name(policy_path):
    """round-<r> for a round's PPO output, else the path (the SFT model)."""
    path = Path(policy_path)
    return path.parent.parent.name if path.parent.name == "ppo" else str(path)


def _prompt_rows(source, n, start=0):
    """n prompts of the file from `start` on, wrapping around."""
    texts = [row["prompt"] for row in data.load_rows(source)]
    return [texts[(start + i) % len(texts)] for i in range(min(n, len(texts)))]


def evaluate_round(config, rnd, policy, previous, rm_out, previous_rm):
    """The round's report on held-out prompts: RM accuracy on the round's held-out pairs (and the previous RM's),
    gold and proxy score and KL of the round's policy, its win rates over the SFT model and over `previous`
    (the policy the round started from)."""
    device = training.setup(config)
    tokenizer = models.load_tokenizer(config.policy)
    texts = _prompt_rows(config.heldout_prompts, config.report_prompts)
    prompts = data.prompts(config.heldout_prompts, tokenizer, config.ppo.max_prompt_len,
                           rows=[{"prompt": p} for p in texts])
    scorer = models.load_value_model(str(rm_out), tokenizer, config.dtype, device)
    reference = models.load_policy(config.ppo.reference or config.policy, tokenizer, config.dtype, device)
    gold = evaluate.labeler(config.gold_labeler)
    settings = EvalConfig(seed=config.seed + 2, batch_size=128, max_new_tokens=config.ppo.max_new_tokens,
                          temperature=config.ppo.temperature)  # the same samples' seed every round
    scores = {}
    for path in dict.fromkeys([policy, previous, config.policy]):
        sampler = evaluate.sampler_for(models.load_policy(str(path), tokenizer, config.dtype, device), prompts,
                                       settings.batch_size, settings.max_new_tokens)
        scores[path] = evaluate.score_policy(sampler, texts, prompts, tokenizer, settings, device, scorer, reference,
                                             gold)
    judge = "gold" if gold else "rm"
    rm_report = json.loads((rnd.dir / "rm" / "report.json").read_text())["heldout"]
    report = {"round": rnd.r, "rm_accuracy": rm_report["accuracy"], "rm_auc": rm_report["roc_auc"],
              **{k: v.mean().item() for k, v in scores[policy].items() if k != "text"},
              "judge": judge, "win_rate_sft": evaluate.win_rate(scores[policy][judge], scores[config.policy][judge]),
              "win_rate_previous": evaluate.win_rate(scores[policy][judge], scores[previous][judge]),
              "sft": {k: v.mean().item() for k, v in scores[config.policy].items() if k != "text"},
              "examples": [{"prompt": p, "response": r} for p, r in zip(texts[:3], scores[policy]["text"])]}
    if previous_rm:  # how well the last round's reward model judges the new policy's samples
        pairs = data.preference_pairs(str(rnd.heldout_preferences), tokenizer, config.rm.max_len)
        stale = models.load_value_model(str(previous_rm), tokenizer, config.dtype, device)
        report["previous_rm_accuracy"] = reward_model.evaluate(stale, pairs, tokenizer.pad_token_id, device)["accuracy"]
    curve = rnd.dir / "ppo" / "eval.jsonl"
    if curve.exists() and "gold" in metrics.read(curve)[0]:
        peak = max(metrics.read(curve), key=lambda record: record["gold"])
        report["gold_peak"] = {"kl": peak["kl"], "gold": peak["gold"], "step": peak["step"]}
    return report


def format_round(report, seconds=None):
    """One greppable line: `round <r>: ...`."""
    r, judge = report["round"], "" if report["judge"] == "gold" else " (RM judge)"
    stale = f" (round {r - 1}'s RM: {100 * report['previous_rm_accuracy']:.1f}%)" if r > 1 else ""
    line = (f"round {r}: RM accuracy on its held-out on-policy pairs {100 * report['rm_accuracy']:.1f}%{stale} | "
            + (f"gold {report['gold']:.3f} | " if "gold" in report else "")
            + f"proxy {report['rm']:.3f} | KL {report['kl']:.2f} | "
            + f"win rate{judge} vs SFT {100 * report['win_rate_sft']:.1f}%"
            + (f", vs round {r - 1} {100 * report['win_rate_previous']:.1f}%" if r > 1 else ""))
    if "gold_peak" in report:
        peak = report["gold_peak"]
        line += f" | gold peaked at KL {peak['kl']:.2f} (PPO step {peak['step']})"
    return line + (f" | {seconds / 60:.1f} min" if seconds is not None else "")


def plot_curves(run_dir, rounds):
    """<run>/over_optimisation.png: gold and proxy (RM) score of the held-out evaluations during PPO, a curve per
    round, against KL to the reference (top) and against the PPO steps of the whole run (bottom)."""
    curves = {r: metrics.read(path) for r in rounds if (path := run_dir / f"round-{r}" / "ppo" / "eval.jsonl").exists()}
    if not curves:
        return
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    keys = [k for k in ("gold", "rm") if k in next(iter(curves.values()))[0]]
    titles = {"gold": "gold score (labeler), * = peak", "rm": "proxy score (the round's reward model)"}
    fig, axes = plt.subplots(2, len(keys), figsize=(5 * len(keys), 7), squeeze=False)
    offset = 0  # PPO steps of the earlier rounds
    for r, records in curves.items():
        peak = max(records, key=lambda x: x.get("gold", x["rm"]))
        for column, key in enumerate(keys):
            for row, x in enumerate(("kl", "step")):
                shift = offset if x == "step" else 0
                line, = axes[row, column].plot([p[x] + shift for p in records], [p[key] for p in records],
                                               marker=".", label=f"round {r}")
                if key == "gold":
                    axes[row, column].plot(peak[x] + shift, peak["gold"], marker="*", markersize=12,
                                           color=line.get_color())
        offset += records[-1]["step"]
    for column, key in enumerate(keys):
        axes[0, column].set_title(titles[key])
        axes[0, column].set_xlabel("KL to the reference (nats/sequence)")
        axes[1, column].set_xlabel("PPO steps, all rounds")
        axes[0, column].legend()
    fig.tight_layout()
    fig.savefig(run_dir / "over_optimisation.png", dpi=80)
    plt.close(fig)


def run(config):
    """The loop; returns the rounds' reports."""
    check(config)
    with checkpoint.locked(training.run_dir(config)):
        return _run(config)


def _run(config):
    labeler = make_labeler(config)
    evaluate.labeler(config.gold_labeler)  # a wrong name fails now, not after a round of training
    run_dir = Path(config.output_dir) / config.run
    curve_prompts = run_dir / "curve_prompts.jsonl"
    if config.curve_prompts and distributed.is_main():
        pipeline._write_jsonl(curve_prompts, [{"prompt": p} for p in _prompt_rows(config.heldout_prompts,
                                                                                   config.curve_prompts)])
    heldout = _prompt_rows(config.heldout_prompts, config.heldout_preference_prompts)
    reports = []
    for r in range(1, config.rounds + 1):
        started, rnd, last = time.time(), Round(config, r), Round(config, r - 1) if r > 1 else None
        policy = str(last.policy) if last else config.policy  # the policy this round starts from
        if config.resume and rnd.report.exists():
            reports.append(json.loads(rnd.report.read_text()))
        else:
            if distributed.is_main() and not (config.resume and rnd.comparisons.exists()):
                train = _prompt_rows(config.prompts, config.preference_prompts, (r - 1) * config.preference_prompts)
                previous = str(Round(config, r - 2).policy) if r > 2 else config.policy if r > 1 else None
                collect(config, rnd, labeler, policy, previous, train, heldout)
                pipeline._write_jsonl(rnd.comparisons, [row for q in range(1, r + 1)  # written last: labels complete
                                                        for row in data.load_rows(str(Round(config, q).preferences))])
            distributed.barrier()
            rm_out = reward_model.train(rnd.stage(
                config, "rm", model=str(last.rm) if last else config.policy, data=str(rnd.comparisons),
                eval_data=str(rnd.heldout_preferences)))
            # The critic carries over from the last round: one fresh from the reward model's head has values of
            # the wrong scale at every prefix, and its first advantages shake the already trained policy.
            ppo_out = ppo.train(rnd.stage(
                config, "ppo", policy=policy, reference=config.ppo.reference or config.policy,
                prompts=config.prompts, reward_model=str(rm_out),
                critic=str(last.critic) if last else config.ppo.critic,
                eval_prompts=str(curve_prompts) if config.curve_prompts else "", eval_labeler=config.gold_labeler))
            if distributed.is_main():
                report = evaluate_round(config, rnd, str(ppo_out), policy, rm_out, last.rm if last else None)
                report["seconds"] = time.time() - started
                rnd.report.write_text(json.dumps(report, indent=2) + "\n")
                reports.append(report)
        if distributed.is_main():
            plot_curves(run_dir, range(1, r + 1))
            print(format_round(reports[-1], reports[-1].get("seconds")), flush=True)
    return reports


def demo(config):
    """`fastrlhf demo --rounds N`: the embedded task's data and SFT model, then N rounds with the demo labeler."""
    check(config)
    with checkpoint.locked(training.run_dir(config)):
        return _demo(config)


def _demo(config):
    started = time.time()
    directory = Path(config.output_dir) / config.run / "data"
    pipeline.write_task_data(config, directory)
    config.sft.data = str(directory / "sft.jsonl")
    sft_out = sft.train(config.stage("sft"))
    shared = {f.name: getattr(config, f.name) for f in dataclasses.fields(Rounds) + dataclasses.fields(Common)}
    reports = run(IterateConfig(**shared, policy=str(sft_out), prompts=str(directory / "prompts.jsonl"),
                                heldout_prompts=str(directory / "heldout_prompts.jsonl"), rm=config.rm, ppo=config.ppo))
    if distributed.is_main():
        print(f"fastrlhf demo: {config.rounds} round{'s' * (config.rounds > 1)} of {config.ppo.steps} PPO steps; "
              f"over-optimisation curves in {Path(config.output_dir) / config.run / 'over_optimisation.png'}; "
              f"wall time {(time.time() - started) / 60:.1f} min (torch threads: {torch.get_num_threads()})")
    return reports
