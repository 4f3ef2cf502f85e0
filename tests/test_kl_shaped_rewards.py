import importlib

import pytest
import torch
from helpers import assert_close, random_mask

from fastrlhf import ops, reference

DTYPES = [torch.float32, torch.bfloat16, torch.float16]



def check_against_reference(backend, scores, kl, mask, *, kl_coef, score_clip):
    got = ops.kl_shaped_rewards(scores.to(backend.device), kl.to(backend.device), mask.to(backend.device),
                                kl_coef=kl_coef, score_clip=score_clip)
    want = reference.kl_shaped_rewards(scores.double(), kl.double(), mask, kl_coef=kl_coef, score_clip=score_clip)
    assert got.dtype == torch.float32 and got.shape == kl.shape
    assert_close(got, want, atol=1e-6, rtol=1e-6, what="rewards")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1), (4, 45), (45,), (2, 3, 17), (1, 130)])
@pytest.mark.parametrize("kl_coef, score_clip", [(0.05, None), (-0.2, 0.5)])
def test_matches_reference(backend, dtype, shape, kl_coef, score_clip):
    scores, kl = (torch.randn(shape[:-1]) * 2).to(dtype), torch.randn(shape).to(dtype)
    check_against_reference(backend, scores, kl, random_mask(shape), kl_coef=kl_coef, score_clip=score_clip)


def test_score_at_last_masked_token(backend):
    """Written out by hand: the score lands on the last masked token, holes or not; empty rows get none."""
    kl = torch.ones(3, 5, device=backend.device)
    mask = torch.tensor([[1, 0, 1, 0, 0], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0]], device=backend.device)
    rewards = ops.kl_shaped_rewards(torch.tensor([4.0, -4.0, 9.0], device=backend.device), kl, mask, kl_coef=0.5,
                                    score_clip=3.0)
    expected = torch.tensor([[-0.5, 0, 2.5, 0, 0], [-0.5, -0.5, -0.5, -0.5, -3.5], [0, 0, 0, 0, 0]])
    assert_close(rewards, expected, atol=0, what="rewards")


def test_many_chunks(backend, monkeypatch):
    """Rows longer than one Triton chunk (16 here): the last token may sit in any chunk."""
    monkeypatch.setattr(importlib.import_module("fastrlhf.kernels.kl_shaped_rewards"), "_MAX_BLOCK_T", 16)
    mask = torch.arange(70) < torch.tensor([[70], [64], [17], [16], [5], [0]])
    mask[:, 3] = True  # the last token may also be the only one
    check_against_reference(backend, torch.randn(6), torch.randn(6, 70), mask, kl_coef=0.1, score_clip=None)


def test_fully_masked_batch(backend):
    kl, mask = torch.randn(2, 3, 7, device=backend.device), torch.zeros(2, 3, 7, device=backend.device)
    rewards = ops.kl_shaped_rewards(torch.randn(2, 3, device=backend.device), kl, mask, kl_coef=0.1)
    assert (rewards == 0).all()


def test_masked_out_positions_are_never_read(backend):
    """nan and inf in kl (and in the score of a row without tokens) at masked-out positions change nothing."""
    kl = torch.randn(3, 6)
    kl[0, 4], kl[1, 1], kl[2] = float("inf"), float("nan"), float("-inf")
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 0, 1, 1, 1, 1], [0, 0, 0, 0, 0, 0]])
    got = ops.kl_shaped_rewards(torch.randn(3).to(backend.device), kl.to(backend.device), mask.to(backend.device),
                                kl_coef=0.1)
    assert torch.isfinite(got).all() and (got[mask == 0] == 0).all()
    check_against_reference(backend, torch.randn(3), kl, mask, kl_coef=0.1, score_clip=None)


def test_mask_forms_and_layouts(backend):
    """0/1 float masks, a bfloat16 score for float32 kl and non-contiguous inputs."""
    kl, scores = torch.randn(2, 12, 5), torch.randn(5, 2)
    check_against_reference(backend, scores.t(), kl.transpose(1, 2), random_mask((2, 5, 12)).float(), kl_coef=0.3,
                            score_clip=1.0)
    check_against_reference(backend, scores[::2].t().bfloat16(), kl[:, ::4], random_mask((2, 3, 5)).long(),
                            kl_coef=0.3, score_clip=None)


def test_no_gradient(backend):
    kl = torch.randn(2, 5, device=backend.device, requires_grad=True)
    rewards = ops.kl_shaped_rewards(kl[:, 0], kl, torch.ones(2, 5, device=backend.device), kl_coef=0.1)
    assert not rewards.requires_grad


def test_bad_inputs(backend):
    kl = torch.randn(2, 5, device=backend.device)
    scores, mask = kl[:, 0].clone(), torch.ones(2, 5, dtype=torch.bool, device=backend.device)
    with pytest.raises(ValueError, match="scores must have shape"):
        ops.kl_shaped_rewards(kl, kl, mask, kl_coef=0.1)
    with pytest.raises(ValueError, match="mask has shape"):
        ops.kl_shaped_rewards(scores, kl, mask[:, :4], kl_coef=0.1)
    with pytest.raises(ValueError, match="scores is on"):
        ops.kl_shaped_rewards(scores.to("meta"), kl, mask, kl_coef=0.1)
    for clip in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="score_clip"):
            ops.kl_shaped_rewards(scores, kl, mask, kl_coef=0.1, score_clip=clip)
    for coef in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match="kl_coef must be finite"):
            ops.kl_shaped_rewards(scores, kl, mask, kl_coef=coef)
    for coef in ("0.1", torch.tensor(0.1), None):
        with pytest.raises(TypeError, match="kl_coef must be a number"):
            ops.kl_shaped_rewards(scores, kl, mask, kl_coef=coef)
    with pytest.raises(TypeError, match="scores"):
        ops.kl_shaped_rewards(scores.long(), kl, mask, kl_coef=0.1)
    with pytest.raises(TypeError, match="kl"):
        ops.kl_shaped_rewards(scores, kl.double(), mask, kl_coef=0.1)
    with pytest.raises(ValueError, match="kl is empty"):
        ops.kl_shaped_rewards(scores, kl[:, :0], mask[:, :0], kl_coef=0.1)
    with pytest.raises(ValueError, match="time dimension"):
        ops.kl_shaped_rewards(scores[0], kl[0, 0], mask[0, 0], kl_coef=0.1)
    if backend.device.type == "cpu":  # data checks run on CPU tensors always
        for bad in (float("nan"), float("-inf")):
            wrong = scores.clone()
            wrong[1] = bad
            with pytest.raises(ValueError, match="scores contains NaN or inf"):
                ops.kl_shaped_rewards(wrong, kl, mask, kl_coef=0.1)
