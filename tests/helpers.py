"""Tolerances and comparisons shared by the op tests."""
import torch

# Per-element precision of each dtype (half a unit in the last place is the rounding error).
EPS = {torch.float32: 2.0**-23, torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}


def assert_close(actual, expected, *, atol, rtol=0.0, what=""):
    """Compare in float64; no nan or inf unless expected has it at the same place."""
    torch.testing.assert_close(actual.detach().double().cpu(), expected.detach().double().cpu(), atol=atol,
                               rtol=rtol, equal_nan=True, msg=lambda m: f"{what}: {m}")


def assert_grad_close(actual, expected, dtype, what="grad"):
    """A gradient stored in `dtype`: within a few units of rounding of the largest entry."""
    scale = expected.abs().max().item() + 1e-30
    assert_close(actual, expected, atol=4 * max(EPS[dtype], 1e-6) * scale, what=what)


def leaf(x, device, dtype=None):
    """x as a new leaf tensor on device (in dtype) that requires grad."""
    return x.to(device=device, dtype=dtype or x.dtype).detach().requires_grad_()


def random_mask(shape, keep=0.7, empty_rows=1):
    """A bool mask of right-padded rows (random lengths) with holes, and `empty_rows` rows (sequences)
    without any token when there are more rows than that."""
    lengths = torch.randint(1, shape[-1] + 1, (*shape[:-1], 1))
    mask = (torch.rand(shape) < keep) & (torch.arange(shape[-1]) < lengths)
    rows = mask.view(-1, shape[-1])
    if rows.shape[0] > empty_rows:
        rows[torch.randperm(rows.shape[0])[:empty_rows]] = False
    return mask


def chi_square_p_value(tokens, probs):
    """p-value of the draws under probs (bins expected to hold < 5 draws merged into one); 0 if a token of
    probability 0 was drawn."""
    observed = torch.bincount(tokens, minlength=probs.numel()).double()
    if observed[probs == 0].sum() > 0:
        return 0.0
    expected = probs.double() * tokens.numel()
    small = expected < 5
    observed = torch.cat([observed[~small], observed[small].sum()[None]])
    expected = torch.cat([expected[~small], expected[small].sum()[None]])
    keep = expected > 0
    statistic = ((observed[keep] - expected[keep]) ** 2 / expected[keep]).sum()
    return torch.special.gammaincc((keep.sum() - 1) / 2.0, statistic / 2).item()
