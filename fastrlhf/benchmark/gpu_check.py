"""`make gpu-check`: what to run first on a machine with a CUDA GPU (at most 10 minutes: each step is killed
after its share).

1. the tests on CUDA tensors (every op's Triton backend; the compile specs checked against real launches);
2. `fastrlhf bench --device cuda` (every op against eager PyTorch and a copy of as many bytes);
3. `fastrlhf demo --preset gpu` (demo-large) with the reward model and PPO cut to a few steps.
Writes bench/results/<gpu>.json (the benchmark's file, with a "gpu_check" section added: versions, each
exact command, its exit status, time and last lines) and exits non-zero if any step failed or no GPU is
present.
"""
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

import torch

from . import results_tag

RESULTS = os.path.join("bench", "results")
# PPO and the reward model cut to a few steps: this checks that training runs on the GPU, not what it learns.
# SFT keeps its steps (seconds on a GPU): an SFT policy that never ends its answers gives the reward model
# only ties to learn from, and the demo stops there.
DEMO_FLAGS = ["--preset", "gpu", "--device", "cuda", "--rm.steps", "50", "--ppo.steps", "3"]


def _run(command, timeout):
    """Runs a command with its output shown as it comes, killed after `timeout` seconds; returns what the
    JSON records of it."""
    print(f"\n$ {' '.join(command)}", flush=True)
    start, lines = time.perf_counter(), []
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as process:
        watchdog = threading.Timer(timeout, process.kill)
        watchdog.start()
        for line in process.stdout:
            print(line, end="", flush=True)
            lines = (lines + [line.rstrip()])[-20:]
        process.wait()
        watchdog.cancel()
    seconds = time.perf_counter() - start
    status = f"killed after {timeout} s" if seconds >= timeout and process.returncode else process.returncode
    return {"command": " ".join(command), "exit_status": status, "seconds": round(seconds, 1), "last_lines": lines}


def main():
    if not torch.cuda.is_available():
        sys.exit(f"gpu-check needs a CUDA GPU, and torch {torch.__version__} (CUDA {torch.version.cuda}) sees none")
    import triton
    device = torch.cuda.get_device_name()
    python = sys.executable
    with tempfile.TemporaryDirectory() as runs:
        steps = [
            _run([python, "-m", "pytest", "-q", "tests", "-k", "triton or gpu_compile"], timeout=270),
            _run([python, "-m", "fastrlhf", "bench", "--device", "cuda", "--out", RESULTS], timeout=150),
            _run([python, "-m", "fastrlhf", "demo", *DEMO_FLAGS, "--output_dir", runs, "--run", "gpu-check"],
                 timeout=180),
        ]
    path = os.path.join(RESULTS, results_tag(torch.device("cuda")) + ".json")
    try:
        with open(path) as f:
            result = json.load(f)  # the benchmark's rows, when it got that far
    except (OSError, json.JSONDecodeError):
        result = {"device": device}
    result["gpu_check"] = {"device": device, "torch": torch.__version__, "cuda": torch.version.cuda,
                           "triton": triton.__version__, "capability": list(torch.cuda.get_device_capability()),
                           "steps": steps}
    os.makedirs(RESULTS, exist_ok=True)
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
    failed = [s["command"] for s in steps if s["exit_status"] != 0]
    print(f"\nwrote {path}; " + (f"FAILED: {failed}" if failed else "every step passed"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
