"""`fastrlhf bench`: every op against eager PyTorch, forward and forward+backward, in one run.

Reports median times, the speed-up measured in the same run, peak extra memory, and the bandwidth
achieved on the bytes the op must move (cases.py) against a plain copy of as many bytes (read +
write), timed in the same run. Writes a table, JSON and a PNG plot.
"""
import argparse
import json
import os
import platform
import re
import statistics
import sys
import time

import torch

from .cases import Case, cases

__all__ = ["Case", "cases", "main", "measure", "pytest_benchmark", "results_tag", "runner"]


def runner(case, impl, backward, device):
    """A zero-argument callable running one implementation of a case on fresh inputs."""
    inputs = case.make_inputs(case.shape, case.dtype, device)
    fn = case.eager if impl == "eager" else case.fast
    if not backward:
        return lambda: fn(**inputs)
    leaves = [inputs[name].requires_grad_() for name in case.grad_inputs]

    def forward_backward():
        out = fn(**inputs)
        first = out[0] if isinstance(out, tuple) else out
        torch.autograd.grad(first.sum(), leaves)  # no .grad accumulation: that would add a pass

    return forward_backward


def pytest_benchmark(op):
    """A pytest-benchmark test of every case of `op`, both implementations, both directions.

    bench/bench_<op>.py is this one line; run them with `pytest bench/`.
    """
    import pytest
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    params = [pytest.param(case, impl, backward, id=f"{case.name}-{impl}-{'fwd+bwd' if backward else 'fwd'}")
              for case in cases(device) if case.op == op
              for backward in ((False, True) if case.grad_inputs else (False,))
              for impl in ("eager", "fastrlhf")]

    @pytest.mark.parametrize("case,impl,backward", params)
    def test(benchmark, case, impl, backward):
        benchmark.group = f"{case.name} {'fwd+bwd' if backward else 'fwd'}"
        fn = runner(case, impl, backward, device)
        benchmark(lambda: (fn(), torch.cuda.synchronize() if device.type == "cuda" else None))

    return test


def _time_ms(fn, device):
    if device.type == "cuda":
        import triton.testing
        return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")
    fn()
    times, start = [], time.perf_counter()
    while len(times) < 5 or (time.perf_counter() - start < 0.5 and len(times) < 100):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def _status_kib(field):
    with open("/proc/self/status") as status:
        return int(re.search(rf"^{field}:\s+(\d+) kB", status.read(), re.M).group(1))


def _peak_extra_bytes(fn, device):
    """Peak memory above what was held before the call (CPU: resident set, reset through clear_refs)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    try:
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")  # resets the peak resident set size (Linux)
        base = _status_kib("VmRSS")
        fn()
        return (_status_kib("VmHWM") - base) * 1024
    except OSError:
        return float("nan")


def copy_ms(n_bytes, device):
    """Time of a plain copy that reads n_bytes / 2 and writes n_bytes / 2 (torch's copy_, all threads)."""
    src = torch.ones(max(n_bytes // 8, 1), dtype=torch.float32, device=device)  # written: no untouched pages
    dst = torch.empty_like(src)
    return _time_ms(lambda: dst.copy_(src), device)


def measure(case, device, backward):
    """One row of the results: both implementations of a case in one direction, and a copy of its bytes."""
    row = {"op": case.op, "shape": list(case.shape), "dtype": str(case.dtype).removeprefix("torch."),
           "direction": "forward+backward" if backward else "forward"}
    for impl in ("eager", "fastrlhf"):
        fn = runner(case, impl, backward, device)
        row[f"{impl}_ms"] = _time_ms(fn, device)
        row[f"{impl}_peak_mb"] = _peak_extra_bytes(fn, device) / 2**20
        del fn
    row["speedup"] = row["eager_ms"] / row["fastrlhf_ms"]
    if case.floor_bytes is not None:
        n_bytes = case.floor_bytes(case.make_inputs(case.shape, case.dtype, "meta"), backward)
        row["bytes"] = n_bytes
        row["copy_ms"] = copy_ms(n_bytes, device)
        row["fastrlhf_gbps"] = n_bytes / row["fastrlhf_ms"] / 1e6
        row["copy_gbps"] = n_bytes / row["copy_ms"] / 1e6
        row["of_copy"] = row["copy_ms"] / row["fastrlhf_ms"]
    return row


def device_description(device):
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            cpu = re.search(r"^model name\s*:\s*(.*)$", info.read(), re.M).group(1)
    except (OSError, AttributeError):
        pass
    return f"{cpu}, {torch.get_num_threads()} threads"


def results_tag(device):
    """The results' file name for a device: cpu, or the GPU's name (nvidia-h100-80gb-hbm3)."""
    name = device.type if device.type == "cpu" else torch.cuda.get_device_name(device)
    return re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-").lower()


def format_table(rows):
    header = f"{'op':<18} {'shape':<18} {'dtype':<9} {'direction':<17} {'eager ms':>9} {'ours ms':>9} " \
             f"{'speed-up':>8} {'eager MB':>9} {'ours MB':>8} {'MB moved':>9} {'copy ms':>9} {'GB/s':>7} {'of copy':>7}"
    lines = [header, "-" * len(header)]
    for r in rows:
        line = (f"{r['op']:<18} {'x'.join(map(str, r['shape'])):<18} {r['dtype']:<9} {r['direction']:<17} "
                f"{r['eager_ms']:>9.3f} {r['fastrlhf_ms']:>9.3f} {r['speedup']:>7.1f}x "
                f"{r['eager_peak_mb']:>9.1f} {r['fastrlhf_peak_mb']:>8.1f}")
        if "bytes" in r:
            line += (f" {r['bytes'] / 1e6:>9.2f} {r['copy_ms']:>9.3f} {r['fastrlhf_gbps']:>7.1f} "
                     f"{r['of_copy']:>7.0%}")
        lines.append(line)
    return "\n".join(lines)


def plot(rows, title, path):
    import matplotlib
    import matplotlib.ticker
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    labels = [f"{r['op']}\n{'x'.join(map(str, r['shape']))} {'fwd+bwd' if '+' in r['direction'] else 'fwd'}"
              for r in rows]
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(rows)), 4.5))
    ax.bar(range(len(rows)), [r["speedup"] for r in rows], color="tab:blue")
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_yscale("log")
    ax.set_xticks(range(len(rows)), labels, rotation=60, ha="right", fontsize=7)
    ax.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%gx"))
    ax.set_ylabel("speed-up over eager PyTorch")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="fastrlhf bench", description=__doc__)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="device to benchmark on (default: cuda if available, else cpu)")
    parser.add_argument("--ops", default="", help="comma-separated op names to run (default: all); "
                        "rollout: the sampler against model.generate (benchmark/rollout.py)")
    parser.add_argument("--out", default=os.path.join("bench", "results"),
                        help="folder for the JSON results and the PNG plot")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's own choice, one per core)")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    wanted = set(filter(None, args.ops.split(",")))
    if "rollout" in wanted:
        from . import rollout
        rollout.run(device, args.out, "fastrlhf bench " + " ".join(argv if argv is not None else sys.argv[1:]))
        wanted.discard("rollout")
        if not wanted:
            return
    selected = [c for c in cases(device) if not wanted or c.op in wanted]
    if wanted - {c.op for c in selected}:
        parser.error(f"unknown ops: {sorted(wanted - {c.op for c in selected})}")
    torch.manual_seed(0)
    rows = []
    for case in selected:
        for backward in (False, True) if case.grad_inputs else (False,):
            rows.append(measure(case, device, backward))
            print(f"measured {case.name} {rows[-1]['direction']}", file=sys.stderr)
    description = device_description(device)
    title = f"fastrlhf vs eager PyTorch on {description} (torch {torch.__version__})"
    print(title)
    print(format_table(rows))
    print("MB moved: the least bytes the op reads and writes; copy ms: a plain copy of as many bytes (read + "
          "write) in this run; GB/s: MB moved / ours ms; of copy: copy ms / ours ms")
    os.makedirs(args.out, exist_ok=True)
    tag = results_tag(device)
    result = {"device": description, "torch": torch.__version__, "command": "fastrlhf bench " + " ".join(
        argv if argv is not None else sys.argv[1:]), "threads": torch.get_num_threads(), "rows": rows}
    with open(os.path.join(args.out, f"{tag}.json"), "w") as f:
        json.dump(result, f, indent=1)
    plot(rows, title, os.path.join(args.out, f"{tag}.png"))
    print(f"wrote {os.path.join(args.out, tag)}.json and .png")
