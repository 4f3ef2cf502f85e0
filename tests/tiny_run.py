"""A tiny PPO setup for the trainer tests: an untrained demo policy as 'SFT', its value model as
'RM', a prompt file, and a way to run `fastrlhf` in a subprocess."""
import json
import os
import subprocess
import sys

import torch

from fastrlhf import models
from fastrlhf.demo import task


def make(directory, n_prompts=32):
    """Writes sft/, rm/, prompts.jsonl and demonstrations (sft.jsonl) under `directory`; returns the paths
    that PPO takes."""
    torch.manual_seed(0)
    tokenizer = models.load_tokenizer("demo")
    sft, rm = directory / "sft", directory / "rm"
    models.save(models.load_policy("demo", tokenizer), tokenizer, sft)
    models.save(models.load_value_model(str(sft), tokenizer), tokenizer, rm)
    train, _ = task.split_prompts(n_prompts, 0, seed=0)
    prompts = directory / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in train))
    rng = task.random.Random(0)
    (directory / "sft.jsonl").write_text("".join(json.dumps({"prompt": p, "response": task.demonstration(p, rng)})
                                                 + "\n" for p in train))
    return {"policy": str(sft), "reward_model": str(rm), "prompts": str(prompts)}


PPO = {"steps": 6, "batch_size": 8, "num_minibatches": 2, "ppo_epochs": 2, "max_new_tokens": 8, "lr": 1e-3,
       "kl_target": 1.0, "device": "cpu"}


def flags(options):
    """--key value for each option."""
    return [x for key, value in options.items() for x in (f"--{key}", str(value))]


def ppo_args(paths, output_dir, run, **overrides):
    return flags({**PPO, **paths, "output_dir": str(output_dir), "run": run, **overrides})


def env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def fastrlhf(args, **kwargs):
    """Starts `python -m fastrlhf args...` (one thread, so that results are reproducible)."""
    return subprocess.Popen([sys.executable, "-m", "fastrlhf", *args], env=env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kwargs)


def last_metrics(stage_dir):
    return json.loads((stage_dir / "metrics.jsonl").read_text().splitlines()[-1])
