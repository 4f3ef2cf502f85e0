"""Every Triton kernel specialization compiled for real GPUs without one, and what each cubin uses.

    python -m fastrlhf.benchmark.gpu_compile [--out bench/results/gpu_compile.json] [--jobs N]

Compiles each spec of `fastrlhf.kernels.compile_specs()` for sm_80 (A100) and sm_90 (H100/H200) with
`triton.compile` and reads registers, shared and local memory of each cubin with `cuobjdump
--dump-resource-usage` (shipped with Triton, like the ptxas it compiles with). tests/test_gpu_compile.py
asserts that each cubin meets the rule:
  - no local memory and no stack: nothing spilled;
  - at least `programs_per_sm` programs fit on one SM at once (2 for grids of many programs, 1 for
    one-program launches), counting registers (64K per SM, allocated per warp in units of 256),
    shared memory (static + the dynamic bytes Triton requests, plus the 1 KB the driver reserves per
    program; 164 KB per SM on sm_80, 228 KB on sm_90) and threads (2048 per SM).
"""
import argparse
import functools
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor

ARCHS = (80, 90)
REGISTERS_PER_SM = 65536
THREADS_PER_SM = 2048
SHARED_PER_SM = {80: 164 * 1024, 90: 228 * 1024}
SHARED_RESERVED_PER_PROGRAM = 1024
DEFAULT_OUT = os.path.join("bench", "results", "gpu_compile.json")
COLUMNS = ("label", "kernel", "sm", "num_warps", "programs_per_sm", "registers", "shared_bytes", "local_bytes",
           "stack_bytes", "resident_programs", "error")


def nvidia_tool(name):
    """The path of a CUDA tool shipped with Triton (TRITON_<NAME>_PATH overrides), or None if missing."""
    import triton
    path = os.environ.get(f"TRITON_{name.upper()}_PATH") or os.path.join(
        os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)
    return path if os.access(path, os.X_OK) else None


def resident_programs(registers, shared, num_warps, cc):
    """How many programs of this cubin fit on one SM at once."""
    threads = 32 * num_warps
    by_registers = REGISTERS_PER_SM // (-(-max(registers, 1) // 8) * 8 * threads)
    by_shared = SHARED_PER_SM[cc] // (shared + SHARED_RESERVED_PER_PROGRAM)
    return min(by_registers, by_shared, THREADS_PER_SM // threads)


def problems(row):
    """What breaks the rule in one row of the table (empty: the cubin passes)."""
    if row["error"]:
        return [f"{row['label']} sm_{row['sm']}: does not compile: {row['error']}"]
    found = []
    if row["local_bytes"] or row["stack_bytes"]:
        found.append(f"{row['label']} sm_{row['sm']}: spills ({row['local_bytes']} B local memory, "
                     f"{row['stack_bytes']} B stack, {row['registers']} registers)")
    if row["resident_programs"] < row["programs_per_sm"]:
        found.append(f"{row['label']} sm_{row['sm']}: {row['resident_programs']} program(s) per SM fit "
                     f"({row['registers']} registers x {32 * row['num_warps']} threads, "
                     f"{row['shared_bytes']} B shared), the launch intends {row['programs_per_sm']}")
    return found


@functools.cache
def _specs():
    from fastrlhf import kernels
    return kernels.compile_specs()


_USAGE = re.compile(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)")


_usage_by_cubin = {}


def _resource_usage(cubin):
    """(registers, stack, static shared, local) of a cubin; identical cubins are read once."""
    key = hashlib.sha256(cubin).hexdigest()
    if key not in _usage_by_cubin:
        with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
            f.write(cubin)
            f.flush()
            out = subprocess.run([nvidia_tool("cuobjdump"), "--dump-resource-usage", f.name], capture_output=True,
                                 text=True, check=True).stdout
        _usage_by_cubin[key] = tuple(map(int, _USAGE.search(out).groups()))
    return _usage_by_cubin[key]


def _compile(index, cc):
    """One row of the table: spec `index` compiled for sm_<cc>."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    spec = _specs()[index]
    row = dict.fromkeys(COLUMNS) | dict(label=spec.label, sm=cc, num_warps=spec.num_warps,
                                        programs_per_sm=spec.programs_per_sm,
                                        kernel=f"{spec.fn.fn.__module__.rsplit('.', 1)[-1]}.{spec.fn.__name__}")
    aligned = {(i,): [["tt.divisibility", 16]] for i, t in enumerate(spec.signature.values()) if t.startswith("*")}
    options = dict(num_warps=spec.num_warps) | ({"maxnreg": spec.maxnreg} if spec.maxnreg else {})
    try:
        compiled = triton.compile(ASTSource(spec.fn, spec.signature, spec.constexprs, aligned),
                                  target=GPUTarget("cuda", cc, 32), options=options)
    except Exception as error:  # noqa: BLE001: a spec that does not compile is a row of the table
        return row | dict(error=f"{type(error).__name__}: {str(error).strip().splitlines()[-1:]}")
    registers, stack, static_shared, local = _resource_usage(compiled.asm["cubin"])
    shared = static_shared + compiled.metadata.shared
    return row | dict(registers=registers, shared_bytes=shared, local_bytes=local, stack_bytes=stack,
                      resident_programs=resident_programs(registers, shared, spec.num_warps, cc))


def _compile_chunk(jobs):
    return [_compile(index, cc) for index, cc in jobs]


def compile_all(jobs=None):
    """The table: one row per (spec, arch), in spec order. Compiles in `jobs` processes (default: all CPUs)."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        raise RuntimeError("unset TRITON_INTERPRET: under the interpreter the kernels cannot be compiled")
    missing = [tool for tool in ("ptxas", "cuobjdump") if nvidia_tool(tool) is None]
    if missing:
        raise FileNotFoundError(f"{' and '.join(missing)} not found in the Triton package")
    work = [(index, cc) for index in range(len(_specs())) for cc in ARCHS]
    jobs = jobs or os.cpu_count() or 1
    chunks = [work[i::jobs * 8] for i in range(jobs * 8)]  # interleaved: big and small kernels in every chunk
    with ProcessPoolExecutor(jobs) as pool:
        rows = [row for chunk in pool.map(_compile_chunk, chunks) for row in chunk]
    order = {(label, cc): i for i, (label, cc) in enumerate((s.label, cc) for s in _specs() for cc in ARCHS)}
    return sorted(rows, key=lambda row: order[row["label"], row["sm"]])


def _ptxas_version():
    out = subprocess.run([nvidia_tool("ptxas"), "--version"], capture_output=True, text=True).stdout
    return out.strip().splitlines()[-1] if out.strip() else "unknown"


def write_table(rows, path):
    import torch
    import triton
    table = dict(triton=triton.__version__, torch=torch.__version__, ptxas=_ptxas_version(), archs=list(ARCHS),
                 specs=len(rows) // len(ARCHS), rule=__doc__.split("meets the rule:")[1].strip(),
                 columns=COLUMNS)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:  # one row per line
        f.write(json.dumps(table, indent=1).removesuffix("\n}"))
        f.write(',\n "rows": [\n  ' + ",\n  ".join(json.dumps([row[c] for c in COLUMNS]) for row in rows) + "\n ]\n}\n")


def summary(rows):
    """A markdown table: per kernel launch (the first word of the labels), the specs and their worst cubin."""
    groups = {}
    for row in rows:
        groups.setdefault(row["label"].split()[0], []).append(row)
    lines = ["| launch | specs | num_warps | registers sm_80 / sm_90 (max) | shared bytes (max) | local bytes | "
             "programs per SM: fewest that fit / intended |", "|---|---|---|---|---|---|---|"]
    for name, group in groups.items():
        ok = [r for r in group if not r["error"]]
        most = {cc: max((r["registers"] for r in ok if r["sm"] == cc), default=0) for cc in ARCHS}
        fit = min(ok, key=lambda r: r["resident_programs"] / r["programs_per_sm"])
        warps = "/".join(map(str, sorted({r["num_warps"] for r in group})))
        lines.append(f"| {name} | {len(group) // len(ARCHS)} | {warps} "
                     f"| {' / '.join(str(most[cc]) for cc in ARCHS)} | {max(r['shared_bytes'] for r in ok)} "
                     f"| {max(r['local_bytes'] + r['stack_bytes'] for r in ok)} "
                     f"| {fit['resident_programs']} / {fit['programs_per_sm']} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m fastrlhf.benchmark.gpu_compile", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=DEFAULT_OUT, help=f"the JSON table (default: {DEFAULT_OUT})")
    parser.add_argument("--jobs", type=int, default=None, help="compiling processes (default: all CPUs)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    rows = compile_all(args.jobs)
    seconds = time.perf_counter() - start
    write_table(rows, args.out)
    found = [p for row in rows for p in problems(row)]
    print(f"{len(rows) // len(ARCHS)} specs x sm_{'/sm_'.join(map(str, ARCHS))} in {seconds:.0f} s: "
          f"{len(found)} problem(s); wrote {args.out}")
    print(summary(rows))
    print("\n".join(found[:50]))
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
