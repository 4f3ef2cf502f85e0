"""End to end on the embedded task, reduced to fit CI: the reward model beats chance on held-out
pairs and PPO raises the labeler's (gold) score over SFT. Then `fastrlhf eval` on the results."""
import json

import pytest

from fastrlhf import cli, config, pipeline

REDUCED = {"threads": 1, "train_prompts": 600, "heldout_prompts": 64, "sft_rows": 2400, "preference_prompts": 200,
           "sft": {"steps": 250}, "rm": {"steps": 100}, "ppo": {"steps": 15, "batch_size": 32}}


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    cfg = config.apply(config.DemoConfig(output_dir=str(out), run="ci"), REDUCED, "test")
    return out, pipeline.demo(cfg)


def test_reduced_demo_aligns(demo):
    _, report = demo
    assert report["reward_model"]["accuracy"] > 0.6 and report["reward_model"]["roc_auc"] > 0.55
    assert report["policy"]["gold"] > report["baseline"]["gold"] + 0.2
    assert report["win_rate"]["judge"] == "gold" and report["win_rate"]["value"] > 0.6
    assert 0 < report["policy"]["kl"] < 20


def test_stage_outputs_reload_and_eval_command(demo, capsys):
    out, _ = demo
    run = out / "ci"
    for stage in ("sft", "rm", "ppo"):
        assert (run / stage / "final" / "model.safetensors").exists()
        assert (run / stage / "metrics.png").exists()
    records = [json.loads(line) for line in (run / "ppo" / "metrics.jsonl").read_text().splitlines()]
    for key in ("score", "kl", "entropy", "clip_frac", "approx_kl", "vf_loss", "explained_variance",
                "response_length", "eos_rate", "tokens_per_s", "time_rollout", "time_score", "time_train"):
        assert key in records[-1]
    cli.main(["eval", "--policy", str(run / "ppo" / "final"), "--baseline", str(run / "sft" / "final"),
              "--reward_model", str(run / "rm" / "final"), "--prompts", str(run / "data" / "heldout_prompts.jsonl"),
              "--labeler", "demo", "--num_prompts", "32", "--threads", "1"])
    printed = capsys.readouterr().out
    assert "gold score (labeler)" in printed and "win rate of policy over baseline (gold judge)" in printed
