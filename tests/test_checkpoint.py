"""Checkpoints: a PPO run killed with SIGKILL and resumed ends exactly like an uninterrupted one;
NaN rewards skip updates, then stop the run with the last checkpoint intact and no final."""
import time

import pytest
import torch
from safetensors.torch import load_file

import tiny_run
from fastrlhf import checkpoint, config, models, ppo
from fastrlhf.errors import Stopped


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    return tiny_run.make(tmp_path_factory.mktemp("tiny"))


def weights(stage_dir):
    return load_file(str(stage_dir / "final" / "model.safetensors"))


def test_sigkill_then_resume_matches_uninterrupted(paths, tmp_path):
    full = tiny_run.fastrlhf(["ppo", *tiny_run.ppo_args(paths, tmp_path, "full", save_every=2)])
    killed = tiny_run.fastrlhf(["ppo", *tiny_run.ppo_args(paths, tmp_path, "killed", save_every=2)])
    checkpoints = tmp_path / "killed" / "ppo" / "checkpoints"
    deadline = time.time() + 120
    while checkpoint.latest(checkpoints) is None and killed.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    killed.kill()  # SIGKILL, wherever it is
    killed.wait()
    assert killed.returncode == -9, "the run finished before it could be killed"
    assert not (tmp_path / "killed" / "ppo" / "final").exists()
    resumed = tiny_run.fastrlhf(["ppo", *tiny_run.ppo_args(paths, tmp_path, "killed", save_every=2),
                                 "--resume", "true"])
    for process in (full, resumed):
        output, _ = process.communicate(timeout=300)
        assert process.returncode == 0, output
    expected, got = (tiny_run.last_metrics(tmp_path / run / "ppo") for run in ("full", "killed"))
    timing = {k for k in expected if k.startswith("time_") or k == "tokens_per_s"}
    assert {k: v for k, v in got.items() if k not in timing} == {k: v for k, v in expected.items() if k not in timing}
    a, b = weights(tmp_path / "full" / "ppo"), weights(tmp_path / "killed" / "ppo")
    assert all(torch.equal(a[k], b[k]) for k in a)
    lines = (tmp_path / "killed" / "ppo" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == tiny_run.PPO["steps"]  # the killed run's steps after its checkpoint were rewritten


def test_nan_rewards_skip_then_stop_with_checkpoint_intact(paths, tmp_path, monkeypatch):
    calls = {"n": 0}
    real_score = models.ValueModel.score

    def score(self, ids, mask):
        calls["n"] += 1
        scores = real_score(self, ids, mask)
        return scores if calls["n"] <= 2 else scores * float("nan")  # NaN from the third step on

    monkeypatch.setattr(models.ValueModel, "score", score)
    cfg = config.PPOConfig(**{**tiny_run.PPO, **paths}, output_dir=str(tmp_path), run="nan", save_every=2,
                           max_bad_steps=3)
    with pytest.raises(Stopped, match="3 updates in a row were skipped .*NaN/inf reward") as stopped:
        ppo.train(cfg)
    stage = tmp_path / "nan" / "ppo"
    saved = checkpoint.latest(stage / "checkpoints")
    assert saved.name == "step-00000001" and f"The newest checkpoint, {saved}, was written before" in str(stopped.value)
    assert not (stage / "final").exists()
    assert all(torch.isfinite(t).all() for t in load_file(str(saved / "policy" / "model.safetensors")).values())
    records = [r for r in map(__import__("json").loads, (stage / "metrics.jsonl").read_text().splitlines())]
    assert [r["skipped"] for r in records] == [0, 0, 1, 2]
