"""SFT -> reward model -> PPO, each stage's output feeding the next; and the demo, which runs
the pipeline on the embedded task and reports on held-out prompts."""
import json
import random
import time
from pathlib import Path

import torch

from . import data, distributed, evaluate, models, ppo, reward_model, sft, training
from .config import EvalConfig
from .demo import task


def _run_stage(train, config, stage):
    """Runs a stage; with --resume a stage whose final checkpoint exists is not run again."""
    final = training.stage_dir(config, stage) / "final"
    if config.resume and final.is_dir():
        print(f"{stage}: done already ({final})")
        return final
    result = train(config)
    return result[0] if isinstance(result, tuple) else result


def pipeline(config):
    sft_out = _run_stage(sft.train, config.stage("sft"), "sft")
    rm_out = _run_stage(reward_model.train, config.stage("rm", model=str(sft_out)), "rm")
    ppo_out = _run_stage(ppo.train, config.stage("ppo", policy=str(sft_out), reward_model=str(rm_out)), "ppo")
    return sft_out, rm_out, ppo_out


def _write_jsonl(path, rows):
    """Written to a temporary file that is renamed into place: a file that exists is complete."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{path.name}")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tmp.replace(path)


def write_task_data(config, directory):
    """The embedded task's files: SFT demonstrations, training and held-out prompts."""
    train, heldout = task.split_prompts(config.train_prompts, config.heldout_prompts, config.seed)
    rng = random.Random(config.seed)
    demonstrations = [{"prompt": p, "response": task.demonstration(p, rng)}
                      for p in (rng.choice(train) for _ in range(config.sft_rows))]
    _write_jsonl(directory / "sft.jsonl", demonstrations)
    _write_jsonl(directory / "prompts.jsonl", [{"prompt": p} for p in train])
    _write_jsonl(directory / "heldout_prompts.jsonl", [{"prompt": p} for p in heldout])
    return train, heldout


def label_candidates(policy_path, prompts, path, config, seed):
    """K samples per prompt from the SFT policy, ranked by the labeler: {prompt, responses, ranking} rows."""
    device = training.setup(config)
    tokenizer = models.load_tokenizer(policy_path)
    policy = models.load_policy(policy_path, tokenizer, config.dtype, device)
    repeated = [p for p in prompts for _ in range(config.candidates)]
    ids = data.prompts(str(path), tokenizer, config.ppo.max_prompt_len, rows=[{"prompt": p} for p in repeated])
    batches = evaluate.sample(policy, ids, tokenizer, temperature=config.candidate_temperature,
                              max_new_tokens=config.ppo.max_new_tokens, batch_size=256, seed=seed, device=device)
    texts = [t for responses, mask, _, _ in batches for t in evaluate.decode(tokenizer, responses, mask)]
    rows = []
    for i, prompt in enumerate(prompts):
        candidates = texts[i * config.candidates:(i + 1) * config.candidates]
        responses = [t if t else "." for t, _ in candidates]  # an empty answer is still an answer to rank
        rows.append({"prompt": prompt, "responses": responses,
                     "ranking": task.rank(prompt, [t for t, _ in candidates], [f for _, f in candidates])})
    _write_jsonl(path, rows)


def demo(config):
    """The whole pipeline on the embedded task, then the final report on held-out prompts."""
    started = time.time()
    directory = Path(config.output_dir) / config.run / "data"
    train_prompts, heldout = write_task_data(config, directory)
    config.sft.data, config.ppo.prompts = str(directory / "sft.jsonl"), str(directory / "prompts.jsonl")
    sft_out = _run_stage(sft.train, config.stage("sft"), "sft")

    preferences, heldout_preferences = directory / "preferences.jsonl", directory / "heldout_preferences.jsonl"
    if distributed.is_main() and not (config.resume and heldout_preferences.exists()):
        label_candidates(sft_out, train_prompts[:config.preference_prompts], preferences, config, config.seed)
        label_candidates(sft_out, heldout, heldout_preferences, config, config.seed + 1)
    distributed.barrier()
    config.rm.data, config.rm.eval_data = str(preferences), str(heldout_preferences)
    rm_out = _run_stage(reward_model.train, config.stage("rm", model=str(sft_out)), "rm")
    ppo_out = _run_stage(ppo.train, config.stage("ppo", policy=str(sft_out), reward_model=str(rm_out)), "ppo")

    if not distributed.is_main():
        return None
    rm_report = json.loads((Path(rm_out).parent / "report.json").read_text())["heldout"]
    report = evaluate.evaluate(EvalConfig(
        run=config.run, output_dir=config.output_dir, seed=config.seed + 2, device=config.device, dtype=config.dtype,
        policy=str(ppo_out), baseline=str(sft_out), reward_model=str(rm_out), reference=str(sft_out),
        prompts=str(directory / "heldout_prompts.jsonl"), labeler="demo", num_prompts=len(heldout),
        max_new_tokens=config.ppo.max_new_tokens, temperature=config.ppo.temperature))
    report["reward_model"] = rm_report
    report["wall_seconds"] = time.time() - started
    (Path(config.output_dir) / config.run / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(format_demo_report(report, len(heldout)))
    return report


def format_demo_report(report, n_heldout):
    rm = report["reward_model"]
    lines = [f"fastrlhf demo: final report on {n_heldout} held-out prompts",
             f"reward model on held-out pairs: accuracy {100 * rm['accuracy']:.1f}%, AUC {rm['auc']:.3f}",
             evaluate.format_report(report, "PPO", "SFT"),
             f"wall time {report['wall_seconds'] / 60:.1f} min (torch threads: {torch.get_num_threads()})"]
    return "\n".join(lines)
