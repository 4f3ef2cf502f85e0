"""Iterated RLHF, reduced to seconds: `demo --rounds 2` with the demo labeler; the same two rounds with a
`command:` labeler (tests/labeler.py, the same rule) killed with SIGKILL in round 2's reward-model stage and
resumed, which must end exactly like the uninterrupted run; labeler output that cannot be used is an error
naming the round and the row, and leaves the earlier rounds as they were. PPO's held-out evaluations (the
over-optimisation curve) leave its training unchanged."""
import json
import re
import shlex
import shutil
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import tiny_run
from fastrlhf import checkpoint, cli, config, iterate, ppo

ROUNDS = {"rounds": 2, "preference_prompts": 40, "heldout_preference_prompts": 16, "curve_prompts": 8,
          "report_prompts": 16}
STAGES = {"rm": {"steps": 20, "batch_size": 16},
          "ppo": {"steps": 4, "batch_size": 16, "num_minibatches": 2, "ppo_epochs": 2, "eval_every": 2}}
TASK = {"threads": 1, "train_prompts": 200, "heldout_prompts": 32, "sft_rows": 1000, "sft": {"steps": 100}}
LABELER = f"command:{shlex.quote(sys.executable)} {shlex.quote(str(Path(__file__).parent / 'labeler.py'))}"


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    cfg = config.apply(config.DemoConfig(output_dir=str(out), run="demo"), {**TASK, **ROUNDS, **STAGES}, "test")
    return out / "demo", iterate.demo(cfg)


def iterate_args(demo_dir, output_dir, run, **overrides):
    """`fastrlhf iterate` flags for the demo run's rounds, from its SFT model and prompts."""
    options = {**ROUNDS, **{f"{stage}.{k}": v for stage, values in STAGES.items() for k, v in values.items()},
               "policy": demo_dir / "sft" / "final", "prompts": demo_dir / "data" / "prompts.jsonl",
               "heldout_prompts": demo_dir / "data" / "heldout_prompts.jsonl", "gold_labeler": "demo", "threads": 1,
               "output_dir": output_dir, "run": run, **overrides}
    return ["iterate", *(x for key, value in options.items() for x in (f"--{key}", str(value)))]


@pytest.fixture(scope="module")
def killed_and_resumed(demo, tmp_path_factory):
    """The demo's two rounds with the command labeler, killed once round 2's reward model has a checkpoint."""
    demo_dir, _ = demo
    out = tmp_path_factory.mktemp("killed")
    args = iterate_args(demo_dir, out, "cmd", labeler=LABELER, **{"rm.save_every": 2})
    killed = tiny_run.fastrlhf(args)
    checkpoints = out / "cmd" / "round-2" / "rm" / "checkpoints"
    deadline = time.time() + 300
    while checkpoint.latest(checkpoints) is None and killed.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    killed.kill()
    first, _ = killed.communicate()
    stage_dir = out / "cmd" / "round-2" / "rm"
    was_in_rm = killed.returncode == -9 and not (stage_dir / "final").exists()
    resumed = tiny_run.fastrlhf(args + ["--resume", "true"])
    second, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, second
    return out / "cmd", was_in_rm, first + second


def test_demo_rounds_report_and_curves(demo):
    run_dir, reports = demo
    assert [r["round"] for r in reports] == [1, 2]
    for report in reports:
        assert 0 <= report["rm_accuracy"] <= 1 and 0 <= report["win_rate_sft"] <= 1
        assert report["judge"] == "gold" and {"gold", "rm", "kl", "gold_peak"} <= set(report)
        assert iterate.format_round(report).startswith(f"round {report['round']}: RM accuracy")
    assert "previous_rm_accuracy" in reports[1] and "previous_rm_accuracy" not in reports[0]
    # Round 2 continued round 1's reward model on both rounds' comparisons, and its PPO started from round 1's policy.
    rows = [(run_dir / f"round-{r}" / "preferences.jsonl").read_text().splitlines() for r in (1, 2)]
    assert (run_dir / "round-2" / "comparisons.jsonl").read_text().splitlines() == rows[0] + rows[1]
    curve = [json.loads(line) for line in (run_dir / "round-2" / "ppo" / "eval.jsonl").read_text().splitlines()]
    assert [r["step"] for r in curve] == [0, 2, 4]
    assert curve[0]["kl"] > 0  # round 2 starts away from the SFT reference
    assert (run_dir / "over_optimisation.png").stat().st_size > 0


def test_command_labeler_ranks_as_the_demo_labeler(demo, killed_and_resumed):
    demo_dir, _ = demo
    cmd_dir, _, output = killed_and_resumed
    for r in (1, 2):
        for name in ("preferences.jsonl", "heldout_preferences.jsonl"):
            assert (cmd_dir / f"round-{r}" / name).read_text() == (demo_dir / f"round-{r}" / name).read_text()
    assert "round 1: RM accuracy" in output and "round 2: RM accuracy" in output


def test_sigkill_in_round_2_reward_model_then_resume_matches_uninterrupted(demo, killed_and_resumed):
    demo_dir, _ = demo
    cmd_dir, was_in_rm, _ = killed_and_resumed
    assert was_in_rm, "the run was not killed inside round 2's reward-model stage"
    for stage in ("rm", "ppo"):
        a, b = (load_file(str(d / "round-2" / stage / "final" / "model.safetensors")) for d in (demo_dir, cmd_dir))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), stage
    a, b = ({k: v for k, v in json.loads((d / "round-2" / "report.json").read_text()).items() if k != "seconds"}
            for d in (demo_dir, cmd_dir))
    assert a == b


ROWS = [{"id": f"t/round-2/{i}", "prompt": "review : room", "finished": [True, True, False, True],
         "responses": ["the room was great .", "the room was bad .", "the room was", "the room was fine ."]}
        for i in range(3)]


@pytest.mark.parametrize("bad, message", [
    ("permutation", r"^round 2, row 2 \(id t/round-2/1\): expected the ranks of its 4 responses: a permutation"),
    ("count", r"^round 2: labeler .* wrote 2 rankings for 3 rows$"),
    ("exit", r"^round 2: labeler .* exited with status 1"),
    ("json", r"^round 2, row 1 \(id t/round-2/0\): labeler .* wrote 'oops', which is not JSON"),
])
def test_bad_command_output_names_round_and_row(bad, message):
    labeler = iterate.make_labeler(config.IterateConfig(labeler=f"{LABELER} --bad {bad} --in-round 2"))
    with pytest.raises(iterate.LabelerError, match=message):
        iterate.rank(labeler, ROWS, 2)


def test_rankings_checked_whatever_the_labeler():
    assert iterate.rank(iterate.demo_labeler, ROWS, 1) == [[1, 3, 4, 2]] * 3
    assert iterate.rank(iterate.make_labeler(config.IterateConfig(labeler=LABELER)), ROWS, 1) == [[1, 3, 4, 2]] * 3
    assert iterate.rank(lambda rows: [[1, 1, 3, 4], None, [2, 1, 4, 3]], ROWS, 1)[1] is None  # ties, unjudged
    for ranking in ([1, 2, 3], [0, 1, 2, 3], [1, 1, 2, 3], [1, 2, 3, True], [1.0, 2, 3, 4], "1234"):
        with pytest.raises(iterate.LabelerError, match=r"round 1, row 1 \(id t/round-2/0\)"):
            iterate.rank(lambda rows: [ranking] * 3, ROWS, 1)
    with pytest.raises(iterate.LabelerError, match="round 1: expected a list of 3 rankings"):
        iterate.rank(lambda rows: None, ROWS, 1)
    with pytest.raises(iterate.LabelerError, match="labeler must be demo or command:<program>, got 'humans'"):
        iterate.make_labeler(config.IterateConfig(labeler="humans"))


def test_bad_labeler_in_round_3_keeps_earlier_rounds(demo, tmp_path, capsys):
    demo_dir, _ = demo
    shutil.copytree(demo_dir, tmp_path / "demo")
    before = {p: p.read_bytes() for p in (tmp_path / "demo").rglob("*") if p.is_file() and "round-" in str(p)}
    with pytest.raises(SystemExit) as exit:
        cli.main(iterate_args(demo_dir, tmp_path, "demo", rounds=3, resume="true",
                              labeler=f"{LABELER} --bad permutation --in-round 3"))
    assert exit.value.code == 2
    assert re.search(r"fastrlhf iterate: error: round 3, row 2 \(id demo/round-3/1\): expected the ranks",
                     capsys.readouterr().err)
    assert {p: p.read_bytes() for p in before} == before
    assert (tmp_path / "demo" / "round-3" / "candidates.jsonl").exists()
    assert not (tmp_path / "demo" / "round-3" / "preferences.jsonl").exists()


def test_heldout_evaluations_leave_ppo_unchanged(tmp_path):
    paths = tiny_run.make(tmp_path / "tiny")
    common = {**tiny_run.PPO, **paths, "output_dir": str(tmp_path), "threads": 1}
    ppo.train(config.PPOConfig(**common, run="plain"))
    ppo.train(config.PPOConfig(**common, run="eval", eval_prompts=paths["prompts"], eval_every=4, eval_labeler="demo"))
    a, b = (load_file(str(tmp_path / run / "ppo" / "final" / "model.safetensors")) for run in ("plain", "eval"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    records = [json.loads(line) for line in (tmp_path / "eval" / "ppo" / "eval.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [0, 4, tiny_run.PPO["steps"]]
    assert records[0]["kl"] == 0 and all({"rm", "gold", "kl", "length", "eos"} <= set(r) for r in records)
    assert not (tmp_path / "plain" / "ppo" / "eval.jsonl").exists()
