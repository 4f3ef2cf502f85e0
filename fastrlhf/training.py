"""What the three training stages share: the `stage` wrapper (checked config, locked run directory,
resume or a fresh start), the batches of a step, the learning rate, the guard against NaN/inf and
diverging updates, and the loop around checkpoints and logging."""
import contextlib
import dataclasses
import functools
import random
import time
from pathlib import Path

import torch
import torch.distributed as dist

from . import checkpoint, distributed, metrics
from . import config as cfg
from . import ops  # every stage takes its PPO math from here
from .errors import Stopped, UserError


def setup(config):
    """Seeds everything, joins the process group under torchrun; returns this process's device."""
    name = config.device if config.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device={config.device!r}, but this torch sees no CUDA GPU; use --device cpu or auto")
    device = torch.device(name)
    distributed.init(device)
    if config.threads:
        torch.set_num_threads(config.threads)
    random.seed(config.seed)
    torch.manual_seed(config.seed + distributed.rank())
    return distributed.local_device(device)


def run_dir(config):
    return Path(config.output_dir) / config.run


def stage_dir(config, stage):
    return run_dir(config) / stage


def stage(name, shown):
    """Turns `body(config, loop)` into a stage's `train(config)` -> path of its final checkpoint. Around the
    body: the config is checked, the run directory locked, and with --resume a finished stage is skipped."""
    def decorate(body):
        @functools.wraps(body)
        def train(config):
            cfg.check(config)
            device = setup(config)
            with checkpoint.locked(run_dir(config)):
                final = stage_dir(config, name) / "final"
                if config.resume and final.is_dir():
                    if distributed.is_main():
                        print(f"{name}: finished already, skipped ({final})")
                    return final
                loop = Loop(config, name, shown, device)
                try:
                    return body(config, loop)
                finally:
                    loop.close()
        return train
    return decorate


@functools.lru_cache(maxsize=4)
def _permutation(n, seed, epoch):
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch)).tolist()


def batch_rows(step, batch_size, n, seed):
    """The dataset rows of a step's global batch: epochs of seeded shuffles, so the step is the data position."""
    positions = range(step * batch_size, (step + 1) * batch_size)
    return [_permutation(n, seed, p // n)[p % n] for p in positions]


def learning_rate(config, step):
    """Linear warmup over warmup_steps, then linear decay to 0 at the last step: a function of the step and
    the config alone, so a resumed run follows the schedule of its (possibly new) options."""
    return config.lr * min((step + 1) / max(config.warmup_steps, 1), max(0.0, (config.steps - step) / config.steps))


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
    """Skips an update whose loss, gradient norm or rewards are NaN/inf; `limit` skipped updates in a row
    (only an applied update breaks a run of them) stop the run, as does `stop` for a diverging one."""

    def __init__(self, limit, stage, skipped=0):
        self.limit, self.stage = limit, stage
        self.in_a_row, self.skipped = 0, skipped
        self.last_checkpoint = None  # the newest checkpoint of this stage, kept up to date by the Loop

    @staticmethod
    def finite(*values):
        """Whether every value is finite, on every rank (all skip together, or DDP would wait forever)."""
        values = [v.full_tensor() if hasattr(v, "full_tensor") else v for v in values]  # FSDP2's grad norm
        finite = torch.stack([torch.as_tensor(v, dtype=torch.float32).isfinite().all() for v in values]).all()
        if dist.is_initialized():
            finite = finite.float().to(distributed.local_device(finite.device))
            dist.all_reduce(finite, op=dist.ReduceOp.MIN)
        return bool(finite)

    def rollout(self, *tensors):
        """Whether a rollout (rewards, values, log-probs) can be trained on; a NaN/inf one is a skipped update."""
        if self.finite(*tensors):
            return True
        self._skip("NaN/inf reward, value or log-prob in the rollout")
        return False

    def update(self, loss, optimizer, params, max_grad_norm):
        """backward + global grad-norm clipping + step, unless the loss or the gradient norm is not finite.
        Only an update applied here ends a run of skipped ones."""
        if not self.finite(loss):
            self._skip("NaN/inf loss")
        else:
            loss.backward()
            norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
            if self.finite(norm):
                optimizer.step()
                self.in_a_row = 0
            else:
                self._skip("NaN/inf gradient norm")
        optimizer.zero_grad(set_to_none=True)

    def _skip(self, reason):
        self.in_a_row += 1
        self.skipped += 1
        if self.in_a_row >= self.limit:
            self.stop(f"{self.in_a_row} updates in a row were skipped (the last for a {reason})")

    def stop(self, why, suspect_after=None):
        """Raises Stopped with `why` and what is left; `suspect_after`: the step after which the weights went bad."""
        last = self.last_checkpoint
        if last is None:
            left = "No checkpoint was written before (see save_every): fix the cause, then start again."
        elif suspect_after is not None and checkpoint.step_of(last) >= suspect_after:
            left = (f"The newest checkpoint, {last}, already holds the weights that diverged; fix the cause, then "
                    "start afresh.")
        else:
            left = (f"The newest checkpoint, {last}, was written before them; fix the cause (e.g. a lower --lr), "
                    "then --resume true continues from it (check its metrics first), or start afresh.")
        raise Stopped(f"{self.stage}: {why}; stopped without writing final. {left}")


class Loop:
    """The loop around a stage's steps: resume from the last checkpoint or start afresh, the learning rate
    of each step, metrics, the guard, periodic checkpoints, and the final Hugging Face checkpoint in
    <stage dir>/final."""

    def __init__(self, config, stage, shown, device):
        self.config, self.stage, self.device = config, stage, device
        self.dir = stage_dir(config, stage)
        self.resume_from = checkpoint.latest(self.dir / "checkpoints") if config.resume else None
        saved = checkpoint.load(self.resume_from) if self.resume_from else {"step": -1, "state": {}}
        self.changed = self._changed_options(saved.get("config"))
        self.start, self.state = saved["step"] + 1, saved["state"]
        self.saved_optimizer = saved.get("optimizer")
        if self.start >= config.steps:
            raise UserError(f"{stage}: the checkpoint {self.resume_from} is at step {self.start}, and steps="
                            f"{config.steps} leaves nothing to run: raise steps, or start afresh without --resume")
        self.guard = Guard(config.max_bad_steps, stage, skipped=self.state.pop("skipped", 0))
        self.guard.last_checkpoint = self.resume_from
        self.shown, self.log, self.optimizer, self.lr = shown, None, None, None

    def _changed_options(self, saved):
        """{option: (checkpoint's value, new value)}; a changed option in FIXED_ON_RESUME is an error."""
        if saved is None:
            return {}
        now = dataclasses.asdict(self.config)
        changed = {k: (saved.get(k), v) for k, v in now.items()
                   if k not in ("resume", "run", "output_dir") and saved.get(k) != v}
        for name in cfg.FIXED_ON_RESUME:
            if name in changed:
                was, new = changed[name]
                raise UserError(f"{self.stage}: cannot resume {self.resume_from} with another {name} "
                                f"(checkpoint: {was!r}, now: {new!r}); restore it, or start afresh without --resume")
        return changed

    def _announce(self):
        if self.resume_from:
            changes = ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in self.changed.items())
            print(f"{self.stage}: resuming {self.resume_from} at step {self.start} of {self.config.steps}"
                  + (f"; changed options apply from now on: {changes}" if changes else ""))
        elif self.config.resume:
            print(f"{self.stage}: no checkpoint to resume in {self.dir / 'checkpoints'}; starting at step 0")
        elif self.dir.is_dir() and any(self.dir.iterdir()):
            print(f"{self.stage}: starting afresh: replacing {self.dir} (--resume true would continue it)")

    def init_path(self, name, default):
        """Where a trained model's weights come from: the checkpoint being resumed, else `default`."""
        return str(self.resume_from / name) if self.resume_from else default

    def optimizer_for(self, params):
        """AdamW over `params`, its state restored when resuming; eps and weight decay from the config."""
        adam = torch.optim.AdamW(params, lr=self.config.lr, eps=self.config.adam_eps,
                                 weight_decay=self.config.weight_decay)
        if self.saved_optimizer is not None:
            adam.load_state_dict(self.saved_optimizer)
            for group in adam.param_groups:  # the options win over the checkpoint's copy of them
                group.update(eps=self.config.adam_eps, weight_decay=self.config.weight_decay)
        self.optimizer, self.saved_optimizer = adam, None
        return adam

    def steps(self):
        """Yields the steps still to run, each with its learning rate set. Nothing is written before: the
        stage's data and models are loaded, so bad input leaves an earlier run's directory as it was."""
        if distributed.is_main():
            self._announce()
            checkpoint.prepare(self.dir, fresh=not self.config.resume)
        distributed.barrier()
        self.log = metrics.Logger(self.dir, self.start, self.config.steps, self.stage, self.shown)
        if self.resume_from:
            checkpoint.restore_rng(self.resume_from)
        for step in range(self.start, self.config.steps):
            self.lr = learning_rate(self.config, step)
            for group in self.optimizer.param_groups:
                group["lr"] = self.lr
            yield step

    def end_step(self, step, values, trained, tokenizer):
        """Logs the step's metrics; writes a checkpoint of the `trained` models when one is due."""
        self.log.log(step, {**values, "skipped": self.guard.skipped, "lr": self.lr})
        every = self.config.save_every
        # No checkpoint during a run of skipped updates: the newest one stays from before them.
        if every and (step + 1) % every == 0 and step + 1 < self.config.steps and not self.guard.in_a_row:
            self.guard.last_checkpoint = checkpoint.save(
                self.dir / "checkpoints", step, trained, tokenizer, self.optimizer,
                {**self.state, "skipped": self.guard.skipped}, dataclasses.asdict(self.config),
                self.config.keep_checkpoints)

    def finish(self, model, tokenizer, plotted, files=None):
        """Saves the result and prints the stage's report: its last metrics."""
        self.log.close(plotted)
        final = checkpoint.save_final(model, tokenizer, self.dir / "final", files)
        if distributed.is_main():
            last = "  ".join(f"{k}={v:.4g}" for k, v in self.log.last.items())
            print(f"{self.stage}: {self.config.steps} steps, skipped {self.guard.skipped} updates; last step: "
                  f"{last}\n{self.stage}: saved {final}")
        return final

    def close(self):
        if self.log is not None:
            self.log.close()
