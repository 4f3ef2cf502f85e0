"""Checkpoints: models (Hugging Face safetensors), optimizer, scheduler, RNG, step and trainer state.

A checkpoint is written to a temporary directory that is renamed into place, so a run killed at
any moment leaves the previous checkpoint intact; `--resume` continues from the newest one. The data
position is the step: batches are a deterministic function of (seed, step).
"""
import random
import shutil
from pathlib import Path

import torch

from . import distributed, models

PREFIX = "step-"


def _rng_state():
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state):
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(directory, step, trained, tokenizer, optimizer, scheduler, state, keep=2):
    """Writes <directory>/step-N atomically. `trained` maps a name to a model saved in its own subdirectory."""
    directory = Path(directory)
    final, tmp = directory / f"{PREFIX}{step:08d}", directory / f".tmp-{PREFIX}{step:08d}"
    if distributed.is_main():
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for name, model in trained.items():
            models.save(model, tokenizer, tmp / name)
        torch.save({"step": step, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "state": state}, tmp / "trainer.pt")
    distributed.barrier()
    torch.save(_rng_state(), tmp / f"rng-{distributed.rank()}.pt")
    distributed.barrier()
    if distributed.is_main():
        tmp.rename(final)  # atomic: a checkpoint directory either is complete or does not exist
        for old in sorted(directory.glob(f"{PREFIX}*"))[:-keep]:
            shutil.rmtree(old)
    distributed.barrier()
    return final


def save_final(model, tokenizer, path, files=None):
    """A stage's result, a Hugging Face checkpoint (plus `files`: name -> text), also written to a
    temporary directory then renamed."""
    path, state_dict = Path(path), distributed.full_state_dict(model)
    if distributed.is_main():
        tmp = path.with_name(f".tmp-{path.name}")
        shutil.rmtree(tmp, ignore_errors=True)
        models.save(model, tokenizer, tmp, state_dict)
        for name, text in (files or {}).items():
            (tmp / name).write_text(text)
        shutil.rmtree(path, ignore_errors=True)
        tmp.rename(path)
    distributed.barrier()
    return path


def latest(directory):
    """The newest complete checkpoint under `directory`, or None."""
    found = sorted(Path(directory).glob(f"{PREFIX}*")) if Path(directory).is_dir() else []
    return found[-1] if found else None


def restore(path, optimizer, scheduler):
    """Loads optimizer, scheduler and this rank's RNG; returns (next step, trainer state)."""
    saved = torch.load(Path(path) / "trainer.pt", map_location="cpu", weights_only=False)
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    rng = Path(path) / f"rng-{distributed.rank()}.pt"
    if rng.exists():  # absent when resuming with more processes than saved
        _set_rng_state(torch.load(rng, weights_only=False))
    return saved["step"] + 1, saved["state"]
