import math
import os
import subprocess
import sys

import pytest
import torch

from fastrlhf import ops


def test_available_backends_always_has_the_reference():
    names = ops.available_backends()
    assert "reference" in names and set(names) <= set(ops.BACKENDS)


def test_default_choice_by_device():
    previous = ops.set_backend(None)
    try:
        expected = "cpp" if "cpp" in ops.available_backends() else "reference"
        assert ops.backend_name(torch.device("cpu")) == expected
        if expected == "cpp":
            assert ops.backend_name(torch.device("cuda")) == "triton"
    finally:
        ops.set_backend(previous)


def test_bad_backend_names_and_devices():
    with pytest.raises(ValueError, match="backend must be one of"):
        ops.set_backend("cuda")
    previous = ops.set_backend("cpp")
    try:
        with pytest.raises(ValueError, match="cpp backend runs on CPU tensors"):
            ops.backend_name(torch.device("meta"))
    finally:
        ops.set_backend(previous)


def test_forcing_triton_and_back_restores_the_cpp_kernels():
    """Forcing triton registers the Triton kernels for CPU over the C++ ones; un-forcing removes them."""
    if "triton" not in ops.available_backends():
        pytest.skip("no Triton here")
    x = torch.randn(3, 4)

    def kernel_error():  # the two kernels word a dtype mismatch differently: "torch.float64" vs "Double"
        with pytest.raises(TypeError) as error:
            torch.ops.fastrlhf.kl_penalty(x, x.double(), 0, math.inf)
        return str(error.value)

    previous = ops.set_backend(None)
    try:
        assert "Double" in kernel_error()
        ops.set_backend("triton")
        assert "torch.float64" in kernel_error()
        ops.set_backend(None)
        assert "Double" in kernel_error()
    finally:
        ops.set_backend(previous)


def run_python(code, **env):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, **env})


def test_environment_variable_forces_a_backend():
    result = run_python("import torch, fastrlhf; print(fastrlhf.ops.backend_name(torch.device('cpu')))",
                        FASTRLHF_BACKEND="reference")
    assert result.stdout.strip() == "reference", result.stderr
    result = run_python("import fastrlhf", FASTRLHF_BACKEND="fast")
    assert result.returncode != 0 and "backend must be one of" in result.stderr


def test_forced_backend_on_the_wrong_device_raises():
    """triton without CUDA or its interpreter; cpp is checked the same way on CUDA tensors."""
    code = """
import torch
from fastrlhf import ops
try:
    ops.kl_penalty(torch.randn(3), torch.randn(3))
except ValueError as error:
    print(error)
"""
    result = run_python(code, FASTRLHF_BACKEND="triton", TRITON_INTERPRET="0")
    if "needs the triton package" in result.stderr:
        pytest.skip("no Triton here")
    assert "triton backend needs CUDA tensors, or TRITON_INTERPRET=1" in result.stdout, result.stderr


def test_missing_extension_falls_back_to_the_reference_with_one_warning():
    code = """
import sys, warnings, torch
sys.modules["fastrlhf._C"] = None  # makes `import fastrlhf._C` fail
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    from fastrlhf import ops
    x = torch.randn(3, 5)
    ops.token_logprobs(x, torch.zeros(3, dtype=torch.long))
    ops.token_logprobs(x, torch.zeros(3, dtype=torch.long))
print(ops.backend_name(torch.device("cpu")), sum("fastrlhf._C is not available" in str(w.message) for w in caught))
"""
    result = run_python(code, FASTRLHF_BACKEND="")
    assert result.stdout.split() == ["reference", "1"], result.stderr


def masked_calls(mask):
    """Every op that takes a mask, called on fixed random inputs with `mask` [2, 5]."""
    x, y, z = torch.randn(3, 2, 5, generator=torch.Generator().manual_seed(0))
    return [lambda: ops.gae(x, y, mask), lambda: ops.kl_shaped_rewards(x[:, 0], x, mask, kl_coef=0.1),
            lambda: ops.masked_mean(x, mask), lambda: ops.masked_mean(x, mask, dim=1),
            lambda: ops.masked_whiten(x, mask), lambda: ops.ppo_policy_loss(x, y, z, mask),
            lambda: ops.ppo_value_loss(x, y, z, mask)]


def test_masks_mean_kept_or_not(backend):
    """One meaning of a mask on every backend: bool, or 0/1 numbers; other numbers (weights?) are
    rejected, not read as "kept" by some backends and as a weight by others."""
    if backend.device.type != "cpu":
        pytest.skip("data checks run on CUDA only with FASTRLHF_CHECK=1")
    mask = torch.rand(2, 5) < 0.7
    for as_bool, as_number in zip(masked_calls(mask), masked_calls(mask.float())):
        for got, want in zip(torch.utils._pytree.tree_leaves(as_number()), torch.utils._pytree.tree_leaves(as_bool())):
            assert torch.equal(got, want)
    weights = mask * 0.5
    for call in masked_calls(weights):
        with pytest.raises(ValueError, match="mask must be bool or hold only 0 and 1, found 0.5"):
            call()


def test_registered_ops_validate_their_inputs(backend):
    """torch.ops.fastrlhf.* called directly with mismatched shapes, dtypes or masks raise, naming the
    argument, on every kernel (token_logprobs: see its tests)."""
    if backend.name == "reference":
        pytest.skip("the reference backend calls no registered op")
    f = torch.ops.fastrlhf
    x, mask = torch.randn(2, 5, device=backend.device), torch.ones(2, 5, dtype=torch.bool, device=backend.device)
    short, half = x[:, :4], x.half()
    calls = {
        "ref_logprobs": [lambda: f.kl_penalty(x, short, 0, math.inf), lambda: f.kl_penalty(x, half, 0, math.inf)],
        "grad_kl": [lambda: f.kl_penalty_backward(x, x, short, 0, math.inf, True, True)],
        "values": [lambda: f.gae(x, short, mask, 1.0, 0.9), lambda: f.gae(x, half, mask, 1.0, 0.9)],
        "mask": [lambda: f.gae(x, x, mask[:, :4], 1.0, 0.9), lambda: f.gae(x, x, mask * 0.5, 1.0, 0.9),
                 lambda: f.masked_mean(x, mask * 0.5, None), lambda: f.masked_whiten(x, mask[:1], True, False, 1e-8),
                 lambda: f.kl_shaped_rewards(x[:, 0], x, mask[:, :4], 0.1, math.inf),
                 lambda: f.ppo_value_loss(x, x, x, mask * 2, 0.2, 0)],
        "scores": [lambda: f.kl_shaped_rewards(x, x, mask, 0.1, math.inf)],
        "old_logprobs": [lambda: f.ppo_policy_loss(x, short, x, mask, 0.2, 0.2, math.inf, 0)],
        "advantages": [lambda: f.ppo_policy_loss(x, x, half, mask, 0.2, 0.2, math.inf, 0)],
        "returns": [lambda: f.ppo_value_loss(x, x, short, mask, 0.2, 0)],
        "grad": [lambda: f.masked_mean_backward(x, x, mask, None, torch.float32)],
    }
    for name, attempts in calls.items():
        for attempt in attempts:
            with pytest.raises((ValueError, TypeError), match=name):
                attempt()
    options = {"estimator": lambda: f.kl_penalty(x, x, 7, math.inf), "clamp": lambda: f.kl_penalty(x, x, 0, 0.0),
               "gamma": lambda: f.gae(x, x, mask, 1.5, 0.9), "eps": lambda: f.masked_whiten(x, mask, True, False, 0.0),
               "kl_coef": lambda: f.kl_shaped_rewards(x[:, 0], x, mask, math.nan, math.inf),
               "dual_clip": lambda: f.ppo_policy_loss(x, x, x, mask, 0.2, 0.2, 1.0, 0),
               "clip_eps": lambda: f.ppo_value_loss(x, x, x, mask, -0.2, 0),
               "temperature": lambda: f.token_logprobs(x, mask[:, 0].long(), math.inf, -100, False)}
    for name, attempt in options.items():
        with pytest.raises(ValueError, match=name):
            attempt()
    with pytest.raises(ValueError, match="reduction"):
        f.ppo_value_loss(x, x, x, mask, 0.2, 3)
    with pytest.raises(ValueError, match="row_scale"):
        f.ppo_loss_backward(x.new_ones(()), x, x[0], torch.float32)
