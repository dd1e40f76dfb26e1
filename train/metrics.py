"""Training metrics: a CSV beside the checkpoint, and TensorBoard event files when asked for."""

from __future__ import annotations

import csv
from pathlib import Path

from markguard.errors import MarkguardError

COLUMNS = ["step", "loss", "lr", "samples_per_s", "elapsed_s"]


class MetricsLog:
    """Appends one row a log interval to ``metrics.csv`` (and scalars to ``tensorboard/``)."""

    def __init__(self, run: Path, *, append: bool, tensorboard: bool = False):
        path = run / "metrics.csv"
        new = not append or not path.exists()
        self.file = open(path, "w" if new else "a", newline="")
        self.csv = csv.writer(self.file)
        if new:
            self.csv.writerow(COLUMNS)
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package
            except ImportError:
                self.file.close()
                raise MarkguardError("tensorboard=true needs the tensorboard package; pip install tensorboard, or set tensorboard=false") from None
            self.tb = SummaryWriter(str(run / "tensorboard"))

    def write(self, step: int, loss: float, lr: float, rate: float, elapsed: float) -> None:
        self.csv.writerow([step, f"{loss:.5f}", f"{lr:.3g}", f"{rate:.1f}", f"{elapsed:.1f}"])
        self.file.flush()
        if self.tb is not None:
            self.tb.add_scalar("train/loss", loss, step)
            self.tb.add_scalar("train/lr", lr, step)
            self.tb.add_scalar("train/samples_per_s", rate, step)
            self.tb.flush()

    def close(self) -> None:
        self.file.close()
        if self.tb is not None:
            self.tb.close()
