"""GPU readiness without a GPU: every Triton kernel specialization the ops can launch compiles for sm_80 and
sm_90 without spilling and fits the occupancy its launch intends (the rule: fastrlhf/benchmark/gpu_compile.py),
and the specs (kernels/__init__.py) are what the launchers really launch."""
import json
import os
import pkgutil
import subprocess
import sys

import pytest
import torch
from triton.runtime.jit import mangle_type

from fastrlhf import kernels, ops
from fastrlhf.benchmark import gpu_compile
from fastrlhf.kernels import _masked_reduction
from fastrlhf.kernels._specs import FLOAT_DTYPES


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    missing = [tool for tool in ("ptxas", "cuobjdump") if gpu_compile.nvidia_tool(tool) is None]
    if missing:
        pytest.skip(f"{' and '.join(missing)} missing from the Triton package (backends/nvidia/bin): "
                    "cannot compile for GPUs here")
    out = tmp_path_factory.mktemp("gpu_compile") / "gpu_compile.json"
    # A separate process: this one runs the kernels under TRITON_INTERPRET, which cannot compile them.
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-m", "fastrlhf.benchmark.gpu_compile", "--out", str(out)], env=env,
                          capture_output=True, text=True)
    assert out.exists(), done.stdout + done.stderr
    with open(out) as f:
        table = json.load(f)
    return [dict(zip(table["columns"], row)) for row in table["rows"]]


def test_every_specialization_compiles_without_spills_at_its_occupancy(table):
    assert len(table) == len(kernels.compile_specs()) * len(gpu_compile.ARCHS)
    found = [problem for row in table for problem in gpu_compile.problems(row)]
    assert not found, f"{len(found)} problem(s):\n" + "\n".join(found[:40])


def test_specs_are_unique_and_cover_every_kernel():
    specs = kernels.compile_specs()
    labels = [spec.label for spec in specs]
    assert len(set(labels)) == len(labels), "labels must tell the specs apart"
    launched = {spec.fn for spec in specs}
    for module in pkgutil.iter_modules(kernels.__path__):
        members = vars(sys.modules[f"{kernels.__name__}.{module.name}"])
        for name, kernel in members.items():
            if name.endswith("_kernel") and hasattr(kernel, "arg_names"):
                assert kernel in launched, f"kernels/{module.name}.py: {name} has no compile spec"


# ---- the specs are the launches: every launch of the ops (a sample under the interpreter) is one of them

def _matches(spec, args, kwargs):
    bound = dict(zip(spec.fn.arg_names, args)) | kwargs
    if spec.num_warps != kwargs.get("num_warps", 4) or spec.maxnreg != kwargs.get("maxnreg"):
        return False
    for name, kind in spec.signature.items():
        value = bound[name]
        if kind == "constexpr":
            if value is not spec.constexprs[name] and value != spec.constexprs[name]:
                return False
        elif mangle_type(value) != kind:
            return False
    return True


def _run_every_op(dtype, device):
    """Each op forward and backward, on small inputs of `dtype`, with each option that picks a kernel."""
    x = torch.randn(3, 37, dtype=dtype, device=device, requires_grad=True)
    y, z = torch.randn(3, 37, dtype=dtype, device=device), torch.randn(3, 37, dtype=dtype, device=device)
    mask = torch.rand(3, 37, device=device) < 0.7
    logits = torch.randn(3, 5, 37, dtype=dtype, device=device, requires_grad=True)
    labels = torch.randint(0, 37, (3, 5), device=device)
    logprobs, entropy = ops.token_logprobs(logits, labels, return_entropy=True)
    (logprobs.sum() + entropy.sum()).backward()
    ops.token_logprobs(logits, labels).sum().backward()
    hidden = torch.randn(3, 5, 16, dtype=dtype, device=device, requires_grad=True)
    head = torch.randn(37, 16, dtype=dtype, device=device, requires_grad=True)
    logprobs, entropy = ops.linear_logprobs(hidden, head, labels, return_entropy=True, chunk_size=4)
    (logprobs.sum() + entropy.sum()).backward()
    for estimator in ("k1", "k2", "k3", "abs"):
        for clamp in (None, 5.0):
            for ref in (y, y.detach().requires_grad_()):  # the gradient of logprobs only, then of both
                ops.kl_penalty(x, ref, estimator=estimator, clamp=clamp).sum().backward()
    ops.gae(x, y, mask)
    ops.kl_shaped_rewards(torch.randn(3, device=device), x, mask, kl_coef=0.1)
    for dim in (None, 0, 1):
        ops.masked_mean(x, mask, dim).sum().backward()
    ops.masked_whiten(x, mask, shift_mean=False, unbiased=True)
    for reduction in ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum"):
        ops.ppo_policy_loss(x, y, z, mask, reduction=reduction)[0].backward()
        ops.ppo_value_loss(x, y, z, mask, reduction=reduction)[0].backward()
    for vocab in (37, 1500):  # a row within one small block, and a longer one
        rows = torch.randn(2, vocab, dtype=dtype, device=device)
        settings = [torch.tensor(v, device=device) for v in ([0.3, 0.9], [0.7, 0.0], [5, 0], [0.9, 1.0])]
        ops.sample_tokens(rows, *settings)


@pytest.mark.skipif("triton" not in ops.available_backends(), reason="needs a GPU or TRITON_INTERPRET=1")
@pytest.mark.parametrize("partials", [False, True], ids=["one-program", "partials"])
def test_every_launch_is_a_spec(monkeypatch, partials):
    if partials:  # the reductions' many-program path on small inputs
        monkeypatch.setattr(_masked_reduction, "SINGLE_PROGRAM_MAX", 64)
    launches = []
    launcher = type(_masked_reduction._moments_kernel)  # JITFunction, or InterpretedFunction when interpreted
    run = launcher.run

    def record(self, *args, grid, warmup, **kwargs):
        launches.append((self, args, kwargs))
        return run(self, *args, grid=grid, warmup=warmup, **kwargs)

    monkeypatch.setattr(launcher, "run", record)
    previous = ops.set_backend("triton")
    try:
        for dtype in FLOAT_DTYPES:
            _run_every_op(dtype, "cuda" if torch.cuda.is_available() else "cpu")
    finally:
        ops.set_backend(previous)
    specs = kernels.compile_specs()  # under the same constants as the launches
    unmatched = [(fn.__name__, kwargs) for fn, args, kwargs in launches
                 if not any(spec.fn is fn and _matches(spec, args, kwargs) for spec in specs)]
    assert launches, "no kernel launch was recorded"
    assert not unmatched, f"launches with no compile spec: {unmatched[:5]}"
