"""linear_logprobs against the eager LM head + float32 log_softmax + gather + entropy (the cases in
fastrlhf/benchmark/cases.py: H = 896, V = 151936, Qwen2.5-0.5B's head).

`pytest bench/bench_linear_logprobs.py` runs them under pytest-benchmark like the other ops, and
`fastrlhf bench --ops linear_logprobs` puts them in the common table. At these sizes a call takes
seconds on a CPU, so `python bench/bench_linear_logprobs.py` measures them with few repeats instead:
median time and peak extra memory, forward and forward+backward, and TRL's chunked implementation too
when `trl` is installed.
"""
import argparse
import dataclasses
import statistics
import time

import torch

from fastrlhf import benchmark

test_linear_logprobs = benchmark.pytest_benchmark("linear_logprobs")


def _trl(hidden, weight, labels):
    """TRL's log-probs and entropy from the logits (selective_log_softmax + entropy_from_logits), the
    logits of all rows made at once by the head as in its trainers."""
    from trl.trainer.utils import entropy_from_logits, selective_log_softmax
    logits = torch.nn.functional.linear(hidden, weight)
    return selective_log_softmax(logits, labels), entropy_from_logits(logits)


def _measure(fn, device, repeats):
    """Median time (ms) and peak extra memory (MB) over `repeats` calls, each timed and watched at once
    (a call takes seconds: no warm-up, so the first call's page faults count, as they do for eager)."""
    times = []

    def timed():
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1e3)

    peak = max(benchmark._peak_extra_bytes(timed, device) for _ in range(repeats))
    return statistics.median(times), peak / 2**20


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[512, 2048])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    impls = {"eager": None, "fastrlhf": None}
    try:
        import trl.trainer.utils  # noqa: F401
        impls["trl"] = _trl
    except ImportError:
        pass
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    print(f"linear_logprobs, H=896, V=151936, {dtype}, on {benchmark.device_description(device)} "
          f"(torch {torch.__version__}){'' if 'trl' in impls else '; trl not installed'}")
    print(f"{'N':>6} {'direction':<17} " + " ".join(f"{name + ' ms':>12} {name + ' MB':>12}" for name in impls)
          + f" {'time ratio':>10} {'memory ratio':>12}")
    torch.manual_seed(0)
    for rows in args.rows:
        case = next(c for c in benchmark.cases(device) if c.op == "linear_logprobs")
        case = dataclasses.replace(case, shape=(rows, *case.shape[1:]))
        for backward in (False, True):
            line, results = f"{rows:>6} {'forward+backward' if backward else 'forward':<17}", {}
            for name, fn in impls.items():
                run = benchmark.runner(case if fn is None else dataclasses.replace(case, eager=fn),
                                       "fastrlhf" if name == "fastrlhf" else "eager", backward, device)
                ms, mb = _measure(run, device, args.repeats)
                if backward:  # not the gradients both must return (float32 hidden and weight)
                    mb -= (rows + case.shape[2]) * case.shape[1] * 4 / 2**20
                results[name] = ms, mb
                line += f" {ms:>12.1f} {mb:>12.1f}"
                del run
            (eager_ms, eager_mb), (ours_ms, ours_mb) = results["eager"], results["fastrlhf"]
            print(line + f" {ours_ms / eager_ms:>9.2f}x {ours_mb / eager_mb:>11.1%}", flush=True)
    print("MB: peak resident memory above that before the call, less the gradients both must return "
          "(forward+backward: N x 896 + 151936 x 896 float32 values); ratios: fastrlhf / eager, in this run; "
          f"threads: {torch.get_num_threads()}")


if __name__ == "__main__":
    main()
