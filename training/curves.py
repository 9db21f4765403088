"""Live curves: every eval appends a row to metrics.jsonl and the same numbers to TensorBoard event files
in the same folder (`tensorboard --logdir runs/`), with the diagnostics statistics at their own interval.
Every training step's batch loss (the lectures' `lossi`) goes to TensorBoard as it happens (`loss/step`
and `loss/step_log10`, the lectures' plot) and to lossi.csv at each eval. loss.png is drawn at the end;
TensorBoard is how to watch a run while it trains.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

METRICS_FILE = "metrics.jsonl"
LOSSI_FILE = "lossi.csv"  # step,loss: every training step's batch loss


def read_lossi(out: Path) -> tuple[list[int], list[float]]:
    """(steps, losses) from lossi.csv; ([], []) when the run has none (trained before it was recorded)."""
    steps, losses = [], []
    path = Path(out) / LOSSI_FILE
    if not path.is_file():
        return steps, losses
    for line in path.read_text().splitlines()[1:]:
        step, _, loss = line.partition(",")
        try:
            steps.append(int(step))
            losses.append(float(loss))
        except ValueError:
            continue  # a line cut by an interrupted write
    return steps, losses


def keep_lossi(out: Path, upto: int | None) -> None:
    """Start lossi.csv afresh (upto None) or keep its rows up to step `upto` (a resumed run continues
    from its last save; the steps it trained after that are trained again)."""
    steps, losses = read_lossi(out) if upto is not None else ([], [])
    rows = [f"{s},{v:.6g}" for s, v in zip(steps, losses, strict=True) if upto is not None and s <= upto]
    (Path(out) / LOSSI_FILE).write_text("".join(f"{r}\n" for r in ["step,loss", *rows]))


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
        self.pending: list[str] = []

    def step(self, step: int, loss: float) -> None:
        """One training step's batch loss: TensorBoard now, lossi.csv at the next eval (one write per eval)."""
        self.pending.append(f"{step},{loss:.6g}\n")
        if self.writer is not None and math.isfinite(loss) and loss > 0:
            self.writer.add_scalar("loss/step", loss, step)
            self.writer.add_scalar("loss/step_log10", math.log10(loss), step)

    def flush_steps(self) -> None:
        if self.pending:
            with open(self.out / LOSSI_FILE, "a") as fh:
                fh.writelines(self.pending)
            self.pending = []

    def eval(self, record: dict[str, Any]) -> None:
        """One eval: the jsonl row, and each number as a scalar (loss/train, loss/val_raw, lr, ...)."""
        self.flush_steps()
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
        self.flush_steps()
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def _tag(label: str) -> str:
    """TensorBoard tags: no spaces or parentheses ("body.4 (tanh)" -> "body.4_tanh")."""
    return re.sub(r"[^A-Za-z0-9_./-]+", "_", label).strip("_")
