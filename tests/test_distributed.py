"""Two CPU processes under torchrun (gloo; DDP, or FSDP2 with --fsdp) give the same PPO run as one process
on the same global batch."""
import json
import socket
import sys

import pytest
import torch
from safetensors.torch import load_file

import tiny_run


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    return tiny_run.make(tmp_path_factory.mktemp("tiny"))


@pytest.mark.parametrize("fsdp", [False, True], ids=["ddp", "fsdp2"])
def test_two_processes_match_one(paths, tmp_path, fsdp):
    options = {**tiny_run.PPO, **paths, "output_dir": str(tmp_path), "steps": 3, "fsdp": fsdp}
    (tmp_path / "two.json").write_text(json.dumps({**options, "run": "two"}))  # torchrun would eat --run
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
              "--master-port", str(free_port()), "-m", "fastrlhf", "ppo", "--config", str(tmp_path / "two.json")]
    one = tiny_run.fastrlhf(["ppo", *tiny_run.ppo_args(paths, tmp_path, "one", steps=3)])
    two = tiny_run.subprocess.Popen(launch, env=tiny_run.env(), stdout=tiny_run.subprocess.PIPE,
                                    stderr=tiny_run.subprocess.STDOUT, text=True)
    for process in (one, two):
        output, _ = process.communicate(timeout=300)
        assert process.returncode == 0, output
    records = {run: [json.loads(line) for line in (tmp_path / run / "ppo" / "metrics.jsonl").read_text().splitlines()]
               for run in ("one", "two")}
    assert len(records["one"]) == len(records["two"]) == 3
    for a, b in zip(records["one"], records["two"]):
        for key in ("score", "kl", "response_length", "pg_loss", "vf_loss", "clip_frac", "approx_kl", "entropy"):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-5), key
    a, b = (load_file(str(tmp_path / run / "ppo" / "final" / "model.safetensors")) for run in ("one", "two"))
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-5, rtol=1e-4)
