"""SFT -> reward model -> PPO, each stage's output feeding the next; and the demo, which runs
the pipeline on the embedded task and reports on held-out prompts."""
import json
import random
import time
import warnings
from pathlib import Path

import torch

from . import checkpoint, data, distributed, evaluate, models, ppo, reward_model, sft, training
from .config import EvalConfig, check
from .demo import task


def pipeline(config):
    """The three stages, each as its own command would run it (with --resume a finished one is skipped)."""
    check(config)
    with checkpoint.locked(training.run_dir(config)):
        _read_inputs(config)
        sft_out = sft.train(config.stage("sft"))
        rm_out = reward_model.train(config.stage("rm", model=str(sft_out)))
        ppo_out = ppo.train(config.stage("ppo", policy=str(sft_out), reward_model=str(rm_out)))
    return sft_out, rm_out, ppo_out


def _read_inputs(config):
    """Reads the later stages' data before the first stage trains: a bad row fails now, not after SFT."""
    tokenizer = models.load_tokenizer(config.sft.model)  # the SFT output's tokenizer is this one
    with warnings.catch_warnings():  # each stage warns about its own data again
        warnings.simplefilter("ignore")
        data.preference_pairs(config.rm.data, tokenizer, config.rm.max_len)
        if config.rm.eval_data:
            data.preference_pairs(config.rm.eval_data, tokenizer, config.rm.max_len)
        data.prompts(config.ppo.prompts, tokenizer, config.ppo.max_prompt_len)


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


def sample_candidates(policy_path, prompts, k, config, seed):
    """k samples of the policy per prompt, [(response texts, ended with EOS)] per prompt: the candidates that
    a labeler ranks (the demo's, and each round's of `iterate`). An empty answer is still an answer to rank;
    it is written "." (the data layer wants non-empty text, and the task scores both as malformed)."""
    device = training.setup(config)
    tokenizer = models.load_tokenizer(policy_path)
    policy = models.load_policy(policy_path, tokenizer, config.dtype, device)
    repeated = [p for p in prompts for _ in range(k)]
    ids = data.prompts("the candidates' prompts", tokenizer, config.ppo.max_prompt_len,
                       rows=[{"prompt": p} for p in repeated])
    sampler = evaluate.sampler_for(policy, ids, 256, config.ppo.max_new_tokens)
    batches = evaluate.sample(sampler, ids, tokenizer, temperature=config.candidate_temperature,
                              max_new_tokens=config.ppo.max_new_tokens, seed=seed, device=device)
    texts = [t for responses, mask, _, _ in batches for t in evaluate.decode(tokenizer, responses, mask)]
    return [([t or "." for t, _ in texts[i:i + k]], [f for _, f in texts[i:i + k]]) for i in range(0, len(texts), k)]


def label_candidates(policy_path, prompts, path, config, seed):
    """K samples per prompt from the SFT policy, ranked by the labeler: {prompt, responses, ranking} rows."""
    samples = sample_candidates(policy_path, prompts, config.candidates, config, seed)
    _write_jsonl(path, [{"prompt": prompt, "responses": responses, "ranking": task.rank(prompt, responses, finished)}
                        for prompt, (responses, finished) in zip(prompts, samples)])


def demo(config):
    """The whole pipeline on the embedded task, then the final report on held-out prompts."""
    check(config)
    with checkpoint.locked(training.run_dir(config)):
        return _demo(config)


def _demo(config):
    started = time.time()
    directory = Path(config.output_dir) / config.run / "data"
    train_prompts, heldout = write_task_data(config, directory)
    config.sft.data, config.ppo.prompts = str(directory / "sft.jsonl"), str(directory / "prompts.jsonl")
    sft_out = sft.train(config.stage("sft"))

    preferences, heldout_preferences = directory / "preferences.jsonl", directory / "heldout_preferences.jsonl"
    if distributed.is_main() and not (config.resume and heldout_preferences.exists()):
        label_candidates(sft_out, train_prompts[:config.preference_prompts], preferences, config, config.seed)
        label_candidates(sft_out, heldout, heldout_preferences, config, config.seed + 1)
    distributed.barrier()
    config.rm.data, config.rm.eval_data = str(preferences), str(heldout_preferences)
    rm_out = reward_model.train(config.stage("rm", model=str(sft_out)))
    ppo_out = ppo.train(config.stage("ppo", policy=str(sft_out), reward_model=str(rm_out)))

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
    lines = [f"fastrlhf demo: final report on {n_heldout} held-out prompts",
             evaluate.format_report(report, "PPO", "SFT"),
             f"wall time {report['wall_seconds'] / 60:.1f} min (torch threads: {torch.get_num_threads()})"]
    return "\n".join(lines)
