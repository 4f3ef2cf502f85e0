"""What the three training stages share: setup, the batches of a step, the optimizer and its
schedule, the guard against non-finite losses, and the loop around checkpoints and logging."""
import contextlib
import functools
import random
import time
from pathlib import Path

import torch
import torch.distributed as dist

from . import checkpoint, distributed, metrics
from . import ops  # every stage takes its PPO math from here


def setup(config):
    """Seeds everything, joins the process group under torchrun; returns this process's device."""
    name = config.device if config.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    distributed.init(device)
    if config.threads:
        torch.set_num_threads(config.threads)
    random.seed(config.seed)
    torch.manual_seed(config.seed + distributed.rank())
    return distributed.local_device(device)


def stage_dir(config, stage):
    return Path(config.output_dir) / config.run / stage


@functools.lru_cache(maxsize=4)
def _permutation(n, seed, epoch):
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch)).tolist()


def batch_rows(step, batch_size, n, seed):
    """The dataset rows of a step's global batch: epochs of seeded shuffles, so the step is the data position."""
    positions = range(step * batch_size, (step + 1) * batch_size)
    return [_permutation(n, seed, p // n)[p % n] for p in positions]


def optimizer(params, config):
    """AdamW with linear warmup then linear decay to 0 over the run."""
    adam = torch.optim.AdamW(params, lr=config.lr, eps=config.adam_eps, weight_decay=config.weight_decay)

    def factor(step):
        return min((step + 1) / max(config.warmup_steps, 1), max(0.0, (config.steps - step) / config.steps))

    return adam, torch.optim.lr_scheduler.LambdaLR(adam, factor)


def token_share(mask, global_mask):
    """Weight of a rank's token-mean loss so that DDP's gradient average is the token mean of the global batch."""
    return mask.sum() * distributed.world() / global_mask.sum().clamp(min=1)


class Timer:
    """Wall-clock seconds of named phases (CUDA is synchronised so GPU work counts where it happens)."""

    def __init__(self):
        self.seconds = {}

    @contextlib.contextmanager
    def __call__(self, name):
        self._sync()
        start = time.perf_counter()
        yield
        self._sync()
        self.seconds[name] = time.perf_counter() - start

    @staticmethod
    def _sync():
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.synchronize()

    def last(self, name):
        return self.seconds[name]


class Guard:
    """Skips updates whose loss or gradient is NaN/inf; too many in a row stops the run."""

    def __init__(self, limit, what):
        self.limit, self.what, self.in_a_row, self.skipped = limit, what, 0, 0

    def ok(self, *values):
        values = [v.full_tensor() if hasattr(v, "full_tensor") else v for v in values]  # FSDP2's grad norm
        finite = torch.stack([torch.as_tensor(v, dtype=torch.float32).isfinite().all() for v in values]).all()
        if dist.is_initialized():  # every rank must skip together or DDP would wait forever
            finite = finite.float().to(distributed.local_device(finite.device))
            dist.all_reduce(finite, op=dist.ReduceOp.MIN)
        if bool(finite):
            self.in_a_row = 0
            return True
        self.in_a_row += 1
        self.skipped += 1
        if self.in_a_row >= self.limit:
            raise RuntimeError(f"{self.in_a_row} consecutive {self.what} updates had a NaN/inf loss or reward; "
                               "stopping. The last checkpoint was written before them and is intact "
                               "(lower the learning rate, check the data, then --resume).")
        return False

    def update(self, loss, optimizer, params, max_grad_norm):
        """backward + global grad-norm clipping + step, unless the loss or the gradient is not finite."""
        if self.ok(loss):
            loss.backward()
            norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
            if self.ok(norm):
                optimizer.step()
        optimizer.zero_grad(set_to_none=True)


class Loop:
    """The loop around a stage's steps: resume from the last checkpoint, progress bar and metrics,
    periodic checkpoints, the final Hugging Face checkpoint in <stage dir>/final."""

    def __init__(self, config, stage, shown):
        if config.fsdp and config.save_every:
            raise ValueError("periodic checkpoints are not supported with --fsdp yet: set save_every to 0")
        self.config, self.dir = config, stage_dir(config, stage)
        self.resume_from = checkpoint.latest(self.dir / "checkpoints") if config.resume else None
        self.stage, self.shown, self.state = stage, shown, {}

    def init_path(self, name, default):
        """Where a trained model's weights come from: the checkpoint being resumed, else `default`."""
        return str(self.resume_from / name) if self.resume_from else default

    def steps(self, optimizer, scheduler, guard):
        """Yields the steps still to run (restoring optimizer, scheduler, RNG and state when resuming)."""
        start = 0
        if self.resume_from:
            start, self.state = checkpoint.restore(self.resume_from, optimizer, scheduler)
            guard.in_a_row, guard.skipped = self.state.pop("guard")
        self.log = metrics.Logger(self.dir, start, self.config.steps, self.stage, self.shown)
        self.optimizer, self.scheduler, self.guard = optimizer, scheduler, guard
        yield from range(start, self.config.steps)

    def end_step(self, step, values, trained, tokenizer):
        self.log.log(step, {**values, "skipped": self.guard.skipped, "lr": self.scheduler.get_last_lr()[0]})
        self.scheduler.step()
        every = self.config.save_every
        # No checkpoint during a run of skipped steps: the last one written stays the last good one.
        if every and (step + 1) % every == 0 and step + 1 < self.config.steps and not self.guard.in_a_row:
            state = {**self.state, "guard": (self.guard.in_a_row, self.guard.skipped)}
            checkpoint.save(self.dir / "checkpoints", step, trained, tokenizer, self.optimizer, self.scheduler,
                            state, self.config.keep_checkpoints)

    def finish(self, model, tokenizer, plotted, files=None):
        """Saves the result and prints the stage's report: its last metrics."""
        self.log.close(plotted)
        final = checkpoint.save_final(model, tokenizer, self.dir / "final", files)
        if distributed.is_main():
            last = "  ".join(f"{k}={v:.4g}" for k, v in self.log.last.items())
            print(f"{self.stage}: {self.config.steps} steps, skipped {self.guard.skipped}; last step: {last}\n"
                  f"{self.stage}: saved {final}")
        return final
