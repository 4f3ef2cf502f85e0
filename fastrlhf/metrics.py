"""Metrics: one JSON line per step in <stage dir>/metrics.jsonl (TensorBoard too when installed),
a progress bar with the live key metrics, and PNG plots of the main curves at the end.

A line is appended whole after each step, so a crash or a full disk can only tear the last one:
reading drops it with a warning, and a resumed run rewrites the file from its checkpoint's step."""
import json
import math
import warnings
from pathlib import Path

from tqdm.auto import tqdm

from . import distributed
from .errors import UserError, writing

RESUME = "; the checkpoints are intact: free space, then --resume true"


class Logger:
    def __init__(self, directory, start_step, steps, desc, shown):
        """`shown`: the metric names on the progress bar."""
        self.path = Path(directory) / "metrics.jsonl"
        self.main, self.shown = distributed.is_main(), shown
        self.bar = tqdm(total=steps, initial=start_step, desc=desc, disable=not self.main, dynamic_ncols=True)
        self.tensorboard, self.last, self.closed = None, {}, False
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
            with writing(self.path, RESUME), self.path.open("a") as f:
                f.write(json.dumps({"step": step, **metrics}) + "\n")
            if self.tensorboard is not None:
                for key, value in metrics.items():
                    self.tensorboard.add_scalar(key, value, step)
        self.bar.set_postfix({k: f"{metrics[k]:.3g}" for k in self.shown if k in metrics}, refresh=False)
        self.bar.update(1)

    def close(self, plotted=()):
        """Closes the bar and TensorBoard, and plots `plotted`; later calls do nothing."""
        if self.closed:
            return
        self.closed = True
        self.bar.close()
        if self.main:
            if self.tensorboard is not None:
                self.tensorboard.close()
            plot(self.path, plotted)


def keep_before(path, step):
    """Keeps the records of a JSONL log before `step`: a resumed run writes the later ones again."""
    path = Path(path)
    records = read(path) if step and path.exists() else []
    with writing(path, RESUME):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(r) + "\n" for r in records if r["step"] < step))


def read(path):
    """The records of a metrics file. A torn last line is dropped with a warning; another bad line is an error."""
    lines = Path(path).read_text(encoding="utf-8", errors="replace").splitlines()
    records = []
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
            if not isinstance(record, dict) or not isinstance(record.get("step"), int):
                raise ValueError
        except ValueError:
            if number < len(lines):
                raise UserError(f"{path}, line {number}: not a metrics record ({line[:40]!r}); "
                                "fix or delete the line") from None
            warnings.warn(f"{path}: dropped its torn last line {number} ({line[:40]!r}): a crash or a full "
                          "disk cut it off")
            break
        records.append(record)
    return records


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
    with writing(Path(path).with_suffix(".png")):
        fig.savefig(Path(path).with_suffix(".png"), dpi=80)
    plt.close(fig)
