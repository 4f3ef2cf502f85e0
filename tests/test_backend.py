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


def run_python(code, **env):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**__import__("os").environ, **env})


def test_environment_variable_forces_a_backend():
    result = run_python("import torch, fastrlhf; print(fastrlhf.ops.backend_name(torch.device('cpu')))",
                        FASTRLHF_BACKEND="reference")
    assert result.stdout.strip() == "reference", result.stderr
    result = run_python("import fastrlhf", FASTRLHF_BACKEND="fast")
    assert result.returncode != 0 and "backend must be one of" in result.stderr


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
