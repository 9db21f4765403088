"""Live curves: every eval appends a row to metrics.jsonl and the same numbers to TensorBoard event files
in the same folder (`tensorboard --logdir runs/`), with the diagnostics statistics at their own interval.
loss.png is still drawn at the end; TensorBoard is how to watch a run while it trains.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

METRICS_FILE = "metrics.jsonl"


class Curves:
    """metrics.jsonl and, when `tensorboard` is installed and enabled, a SummaryWriter next to it."""

    def __init__(self, out: Path, tensorboard: bool = True, log=print):
        self.out = Path(out)
        self.writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                log("note: tensorboard is not installed (pip install tensorboard); writing metrics.jsonl only")
            else:
                self.writer = SummaryWriter(log_dir=str(self.out))

    def eval(self, record: dict[str, Any]) -> None:
        """One eval: the jsonl row, and each number as a scalar (loss/train, loss/val_raw, lr, ...)."""
        with open(self.out / METRICS_FILE, "a") as fh:
            fh.write(json.dumps(record) + "\n")
        if self.writer is None:
            return
        step = record["step"]
        for key, value in record.items():
            if key != "step" and isinstance(value, int | float) and not isinstance(value, bool):
                tag = f"loss/{key.replace('_loss', '')}" if "_loss" in key else f"train/{key}"
                self.writer.add_scalar(tag, value, step)
        self.writer.flush()

    def diagnostics(self, record: dict[str, Any]) -> None:
        """A diagnostics record: activation mean/std/saturation, gradient std and update ratios per layer."""
        if self.writer is None:
            return
        step = record["step"]
        for label, stats in record.get("activations", {}).items():
            for key in ("std", "saturation", "grad_std"):
                if stats.get(key) is not None:
                    self.writer.add_scalar(f"activations/{_tag(label)}/{key}", stats[key], step)
        for name, p in record.get("params", {}).items():
            for key in ("grad_data", "update_ratio_log10"):
                if p.get(key) is not None:
                    self.writer.add_scalar(f"{key}/{_tag(name)}", p[key], step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def _tag(label: str) -> str:
    """TensorBoard tags: no spaces or parentheses ("body.4 (tanh)" -> "body.4_tanh")."""
    return re.sub(r"[^A-Za-z0-9_./-]+", "_", label).strip("_")
