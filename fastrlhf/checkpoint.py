"""Checkpoints: models (Hugging Face safetensors), optimizer, RNG, step, trainer state and options; and
the lock on a run directory.

A checkpoint is written to a temporary directory that is renamed into place, so a run killed at any
moment, or stopped by a full disk, leaves the previous checkpoint intact; `--resume` continues from the
newest one. The data position is the step: batches are a deterministic function of (seed, step).
"""
import contextlib
import fcntl
import os
import random
import shutil
from pathlib import Path

import torch

from . import distributed, models
from .errors import UserError, writing

PREFIX = "step-"
LOCK = ".lock"


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


def _torch_save(value, path):
    with open(path, "wb") as f:  # a file object: a full disk then raises OSError(ENOSPC), not "unexpected pos"
        torch.save(value, f)


@contextlib.contextmanager
def _into(tmp, then):
    """Writes into the temporary directory `tmp`; on failure it is removed (on a full disk that frees the space)."""
    try:
        with writing(tmp, then):
            yield
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def save(directory, step, trained, tokenizer, optimizer, state, options, keep=2):
    """Writes <directory>/step-N atomically. `trained` maps a name to a model saved in its own subdirectory;
    `options` is the stage's config as a dict (a resumed run compares its own with it)."""
    directory = Path(directory)
    final, tmp = directory / f"{PREFIX}{step:08d}", directory / f".tmp-{PREFIX}{step:08d}"
    previous = latest(directory)
    then = f"; the previous checkpoint ({previous}) is intact" if previous else "; no checkpoint was written"
    if distributed.is_main():
        shutil.rmtree(tmp, ignore_errors=True)
        with _into(tmp, then):
            tmp.mkdir(parents=True)
            for name, model in trained.items():
                models.save(model, tokenizer, tmp / name)
            _torch_save({"step": step, "optimizer": optimizer.state_dict(), "state": state, "config": options},
                        tmp / "trainer.pt")
    distributed.barrier()
    with _into(tmp, then):
        _torch_save(_rng_state(), tmp / f"rng-{distributed.rank()}.pt")
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
        with _into(tmp, "; the stage's checkpoints, if any, are intact"):
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


def step_of(path):
    """The step after which the checkpoint at `path` was written."""
    return int(Path(path).name[len(PREFIX):])


def load(path):
    """A checkpoint's trainer state: {step, optimizer, state, config}."""
    return torch.load(Path(path) / "trainer.pt", map_location="cpu", weights_only=False)


def restore_rng(path):
    """This rank's RNG state as the checkpoint saved it."""
    rng = Path(path) / f"rng-{distributed.rank()}.pt"
    if rng.exists():  # absent when resuming with more processes than saved
        _set_rng_state(torch.load(rng, weights_only=False))


def prepare(stage_dir, fresh):
    """A fresh run replaces the stage's directory (checkpoints, final, metrics of an earlier run); a resumed
    one removes the temporary directories that a killed or failed write left."""
    stage_dir = Path(stage_dir)
    if fresh:
        shutil.rmtree(stage_dir, ignore_errors=True)
        return
    for tmp in [*stage_dir.glob(".tmp-*"), *stage_dir.glob(f"checkpoints/.tmp-{PREFIX}*")]:
        shutil.rmtree(tmp, ignore_errors=True)


_held = set()  # run directories this process has locked (a pipeline's stages lock the pipeline's directory again)


@contextlib.contextmanager
def locked(directory):
    """Holds <directory>/.lock while a run writes there: a second run exits at once naming the first's PID.
    The lock is flock(2), so the kernel releases it when its holder dies, however it dies: a lock left by
    a killed run is taken over, with a note. Under torchrun rank 0 holds it for every rank."""
    directory = Path(directory).absolute()
    if int(os.environ.get("RANK", "0")) != 0 or directory in _held:
        yield
        return
    with writing(directory / LOCK):
        directory.mkdir(parents=True, exist_ok=True)
        handle = open(directory / LOCK, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        owner = handle.read().strip() or "unknown"
        handle.close()
        raise UserError(f"{directory} is in use by another fastrlhf run (PID {owner}); wait for it to end, "
                        "or choose another --run or --output_dir") from None
    handle.seek(0)
    previous = handle.read().strip()
    if previous:  # a holder that ended normally empties the file: this one died holding the lock
        print(f"taking over the lock of {directory} from PID {previous}, which ended without releasing it")
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    _held.add(directory)
    try:
        yield
    finally:
        _held.discard(directory)
        handle.seek(0)
        handle.truncate()
        handle.close()  # releases the lock; the file stays (deleting it would race with a run opening it)
