"""Metrics: one JSON line per step in <stage dir>/metrics.jsonl (TensorBoard too when installed),
a progress bar with the live key metrics, and PNG plots of the main curves at the end."""
import json
import math
from pathlib import Path

from tqdm.auto import tqdm

from . import distributed


class Logger:
    def __init__(self, directory, start_step, steps, desc, shown):
        """`shown`: the metric names on the progress bar."""
        self.path = Path(directory) / "metrics.jsonl"
        self.main, self.shown = distributed.is_main(), shown
        self.bar = tqdm(total=steps, initial=start_step, desc=desc, disable=not self.main, dynamic_ncols=True)
        self.tensorboard, self.last = None, {}
        if self.main:
            keep_before(self.path, start_step)  # a resumed run rewrites the steps after its checkpoint
            try:
                from torch.utils.tensorboard import SummaryWriter
                self.tensorboard = SummaryWriter(str(self.path.parent / "tensorboard"))
            except ImportError:
                pass

    def log(self, step, metrics):
        metrics = self.last = {k: float(v) for k, v in metrics.items()}
        if self.main:
            with self.path.open("a") as f:
                f.write(json.dumps({"step": step, **metrics}) + "\n")
            if self.tensorboard is not None:
                for key, value in metrics.items():
                    self.tensorboard.add_scalar(key, value, step)
        self.bar.set_postfix({k: f"{metrics[k]:.3g}" for k in self.shown if k in metrics}, refresh=False)
        self.bar.update(1)

    def close(self, plotted=()):
        self.bar.close()
        if self.main:
            if self.tensorboard is not None:
                self.tensorboard.close()
            plot(self.path, plotted)


def keep_before(path, step):
    """Drops the lines of a JSONL log from `step` on (a resumed run writes them again)."""
    path = Path(path)
    kept = [line for line in path.read_text().splitlines() if json.loads(line)["step"] < step] if path.exists() else []
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in kept))


def read(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def plot(path, keys, columns=3):
    """<path without suffix>.png: one panel per metric against the step."""
    records = read(path) if Path(path).exists() else []
    keys = [k for k in keys if any(k in r for r in records)]
    if not keys:
        return
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = math.ceil(len(keys) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4 * columns, 3 * rows), squeeze=False)
    for ax, key in zip(axes.flat, keys):
        points = [(r["step"], r[key]) for r in records if key in r]
        ax.plot(*zip(*points))
        ax.set_title(key)
        ax.set_xlabel("step")
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(Path(path).with_suffix(".png"), dpi=80)
    plt.close(fig)
