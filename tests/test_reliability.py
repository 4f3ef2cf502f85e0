"""The trainer under stress, on the tiny demo model: the guard stops a run at an absurd learning rate
(exit code 3, no final, a true message about the checkpoints), the optional divergence check, resume
with changed options, a torn metrics file, a locked run directory, and a full disk (a small tmpfs)."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import tiny_run
from fastrlhf import checkpoint, cli, config, metrics, training
from fastrlhf.errors import Stopped, UserError


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    return tiny_run.make(tmp_path_factory.mktemp("tiny"), n_prompts=16)


def sft_args(paths, output_dir, **options):
    data = Path(paths["policy"]).parent / "sft.jsonl"
    return ["sft", *tiny_run.flags({"data": data, "output_dir": output_dir, "run": "r", "device": "cpu",
                                    "batch_size": 2, "steps": 4, "warmup_steps": 0, **options})]


def ppo_args(paths, output_dir, **options):
    return ["ppo", *tiny_run.ppo_args(paths, output_dir, "r", **{"steps": 3, "ppo_epochs": 1, "max_new_tokens": 6,
                                                                 **options})]


def run(capsys, argv):
    """`fastrlhf argv` in this process: (exit code, stdout, stderr)."""
    try:
        code = cli.main([str(a) for a in argv])
    except SystemExit as exit:
        code = exit.code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_guard_counts_every_skipped_update_until_one_is_applied():
    """A finite loss does not end a run of skipped updates (it used to, so NaN gradients never stopped a run)."""
    p = torch.nn.Parameter(torch.zeros(1))
    adam = torch.optim.SGD([p], lr=0.1)
    guard = training.Guard(limit=4, stage="test")
    infinite_gradient = lambda: torch.sqrt(p - p.detach()).sum()  # noqa: E731  (loss 0, gradient inf)
    guard.update(infinite_gradient(), adam, [p], 1.0)
    assert guard.rollout(torch.ones(2))  # a finite rollout is not an applied update
    guard.update(p.sum() * float("nan"), adam, [p], 1.0)
    assert not guard.rollout(torch.tensor([1.0, float("inf")]))
    assert (guard.in_a_row, guard.skipped, p.item()) == (3, 3, 0.0)
    with pytest.raises(Stopped, match=r"test: 4 updates in a row were skipped \(the last for a NaN/inf gradient "
                                      r"norm\); stopped without writing final. No checkpoint was written"):
        guard.update(infinite_gradient(), adam, [p], 1.0)
    guard = training.Guard(limit=2, stage="test")
    guard.update(infinite_gradient(), adam, [p], 1.0)
    guard.update((p - 1).pow(2).sum(), adam, [p], 1.0)  # applied: the run of skipped updates ends
    guard.update(infinite_gradient(), adam, [p], 1.0)
    assert (guard.in_a_row, guard.skipped) == (1, 2) and p.item() > 0


def test_absurd_learning_rate_stops_sft_with_the_checkpoint_written_before(paths, tmp_path, capsys):
    code, _, err = run(capsys, sft_args(paths, tmp_path, lr=1e30, steps=20, save_every=1, max_bad_steps=3))
    stage = tmp_path / "r" / "sft"
    saved = stage / "checkpoints" / "step-00000000"  # step 0 was applied (weights near 1e30), then NaN losses
    assert code == 3, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("fastrlhf sft: error: sft: 3 updates in a row were skipped (the last for a NaN/inf ")
    assert last.endswith(f"stopped without writing final. The newest checkpoint, {saved}, was written before them; "
                         "fix the cause (e.g. a lower --lr), then --resume true continues from it (check its metrics "
                         "first), or start afresh.")
    assert checkpoint.latest(stage / "checkpoints") == saved and not (stage / "final").exists()
    assert [r["skipped"] for r in metrics.read(stage / "metrics.jsonl")] == [0, 1, 2]


def test_absurd_learning_rate_stops_ppo_end_to_end_without_a_checkpoint(paths, tmp_path):
    """The issue's run: `fastrlhf ppo --lr 1e30` exits 3 and says that no checkpoint exists (none does)."""
    done = subprocess.run([sys.executable, "-m", "fastrlhf", *ppo_args(paths, tmp_path, lr=1e30, steps=10)],
                          env=tiny_run.env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 3, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("fastrlhf ppo: error: ppo: 5 updates in a row were skipped") and "Traceback" not in done.stderr
    assert last.endswith("No checkpoint was written before (see save_every): fix the cause, then start again.")
    assert not list(tmp_path.rglob("final")) and not list(tmp_path.rglob("step-*"))


def test_entropy_collapse_stops_ppo_when_asked(paths, tmp_path, capsys):
    """--lr 10 collapses the policy at once (entropy ~1e-9) without a NaN: only the divergence check sees it."""
    code, _, err = run(capsys, ppo_args(paths, tmp_path, lr=10, save_every=1, stop_entropy=0.5))
    stage = tmp_path / "r" / "ppo"
    assert code == 3, err
    assert "ppo: step 1: the rollout's mean token entropy" in err and "is below stop_entropy=0.5" in err
    assert f"The newest checkpoint, {stage / 'checkpoints' / 'step-00000000'}, already holds the weights" in err
    assert not (stage / "final").exists()


def test_resume_applies_changed_options_and_refuses_the_fixed_ones(paths, tmp_path, capsys):
    args, stage = sft_args(paths, tmp_path, save_every=2), tmp_path / "r" / "sft"
    assert run(capsys, args)[0] == 0
    marker = stage / "final" / "marker"
    marker.write_text("the first run's")
    code, out, _ = run(capsys, args + ["--resume", "true", "--lr", "1"])  # a finished stage is skipped...
    assert code == 0 and f"sft: finished already, skipped ({stage / 'final'})" in out and marker.exists()

    shutil.rmtree(stage / "final")  # ...else it resumes from its last checkpoint (step 1), as after a crash
    code, _, err = run(capsys, args + ["--resume", "true", "--seed", "1"])
    assert code == 2 and "sft: cannot resume" in err and "with another seed (checkpoint: 0, now: 1)" in err
    code, _, err = run(capsys, args + ["--resume", "true", "--steps", "2"])
    assert code == 2 and "is at step 2, and steps=2 leaves nothing to run" in err
    code, out, _ = run(capsys, args + ["--resume", "true", "--lr", "0.01", "--steps", "6", "--adam_eps", "1e-6"])
    assert code == 0
    assert (f"sft: resuming {stage / 'checkpoints' / 'step-00000001'} at step 2 of 6; changed options apply from "
            "now on: steps 4 -> 6, lr 0.003 -> 0.01, adam_eps 1e-08 -> 1e-06") in out
    records = metrics.read(stage / "metrics.jsonl")
    before, after = config.SFTConfig(steps=4, warmup_steps=0), config.SFTConfig(lr=0.01, steps=6, warmup_steps=0)
    assert [r["step"] for r in records] == list(range(6))
    assert [r["lr"] for r in records] == [training.learning_rate(before, s) for s in (0, 1)] + \
        [training.learning_rate(after, s) for s in range(2, 6)]

    code, out, _ = run(capsys, args)  # without --resume: a fresh run replaces the directory, old checkpoints too
    assert code == 0 and f"sft: starting afresh: replacing {stage}" in out
    assert [p.name for p in (stage / "checkpoints").iterdir()] == ["step-00000001"]
    assert len(metrics.read(stage / "metrics.jsonl")) == 4


def test_a_torn_last_metrics_line_is_dropped_on_resume(paths, tmp_path, capsys):
    args, stage = sft_args(paths, tmp_path, save_every=2), tmp_path / "r" / "sft"
    assert run(capsys, args)[0] == 0
    shutil.rmtree(stage / "final")
    with open(stage / "metrics.jsonl", "a") as f:
        f.write('{"step": 4, "loss": 2.3')  # a crash or a full disk cut the last line
    with pytest.warns(UserWarning, match=r"metrics.jsonl: dropped its torn last line 5"):
        assert run(capsys, args + ["--resume", "true"])[0] == 0
    assert [r["step"] for r in metrics.read(stage / "metrics.jsonl")] == [0, 1, 2, 3]
    (stage / "metrics.jsonl").write_text('{"step": 0}\n{"st\n{"step": 2}\n')  # not torn: damaged
    with pytest.raises(UserError, match=r"metrics.jsonl, line 2: not a metrics record"):
        metrics.read(stage / "metrics.jsonl")


HOLD_LOCK = """import sys, time
from fastrlhf import checkpoint
lock = checkpoint.locked(sys.argv[1])
lock.__enter__()
print("locked", flush=True)
time.sleep(300)
"""


def test_a_locked_run_directory_stops_a_second_run_and_a_dead_holder_is_taken_over(paths, tmp_path, capsys):
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(tmp_path / "r")], stdout=subprocess.PIPE,
                              text=True, env=tiny_run.env())
    try:
        assert holder.stdout.readline().strip() == "locked"
        code, _, err = run(capsys, sft_args(paths, tmp_path, steps=1))
        assert code == 2
        assert err.strip() == (f"fastrlhf sft: error: {tmp_path / 'r'} is in use by another fastrlhf run (PID "
                               f"{holder.pid}); wait for it to end, or choose another --run or --output_dir")
        assert not (tmp_path / "r" / "sft").exists()
    finally:
        holder.kill()  # SIGKILL: no clean-up; the kernel drops the flock, the file keeps the PID
        holder.wait()
    code, out, _ = run(capsys, sft_args(paths, tmp_path, steps=1))
    assert code == 0 and f"from PID {holder.pid}, which ended without releasing it" in out
    assert (tmp_path / "r" / ".lock").read_text() == ""  # released cleanly


@pytest.fixture
def small_disk(tmp_path):
    """A 16 MiB tmpfs: a tiny SFT run's first checkpoint (10 MB) fits, the second does not."""
    mount = tmp_path / "disk"
    mount.mkdir()
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount)], capture_output=True,
                              text=True)
    except FileNotFoundError:
        pytest.skip("no mount command here")
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN): {done.stderr.strip()}")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


def test_a_full_disk_names_cause_and_path_and_the_run_resumes_once_there_is_space(paths, small_disk, capsys):
    args, stage = sft_args(paths, small_disk, steps=6, save_every=2), small_disk / "r" / "sft"
    code, _, err = run(capsys, args)
    assert code == 2, err
    assert err.strip().splitlines()[-1] == (f"fastrlhf sft: error: no space left on the device while writing "
                           f"{stage / 'checkpoints' / '.tmp-step-00000003'}; the previous checkpoint "
                           f"({stage / 'checkpoints' / 'step-00000001'}) is intact")
    assert [p.name for p in (stage / "checkpoints").iterdir()] == ["step-00000001"]  # the partial one is gone
    assert not (stage / "final").exists()
    subprocess.run(["mount", "-o", "remount,size=48m", str(small_disk)], check=True)
    code, out, err = run(capsys, args + ["--resume", "true"])
    assert code == 0, err
    assert "resuming" in out and (stage / "final" / "model.safetensors").exists()
