import os

import pytest
import torch

if not torch.cuda.is_available():
    # Triton kernels run on CPU tensors through the interpreter; it must be set before they are defined.
    os.environ.setdefault("TRITON_INTERPRET", "1")

from fastrlhf import ops  # noqa: E402


class Backend:
    def __init__(self, name):
        self.name = name
        self.device = torch.device("cuda" if name == "triton" and torch.cuda.is_available() else "cpu")

    def __repr__(self):
        return self.name


@pytest.fixture(params=ops.available_backends())
def backend(request):
    """Each usable backend in turn, forced for the duration of the test."""
    previous = ops.set_backend(request.param)
    yield Backend(request.param)
    ops.set_backend(previous)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
