"""Plots of a run: plots/loss.png from lossi.csv and metrics.jsonl (every run), and the diagnostics figures.

Diagnostics figures have one panel per layer type (a 6-layer GPT's six c_fc layers share a panel, one
line each) and their legends outside the data: one panel of 18 lines on 10 colours was unreadable.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

PLOTS_DIR = "plots"
UPDATE_RATIO_GUIDE = -3.0  # log10 of the update:data ratio Karpathy calls about right
OUTSIDE = {"loc": "upper left", "bbox_to_anchor": (1.01, 1.0), "fontsize": 7, "borderaxespad": 0.0}


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut by an interrupted write: skip it
    return rows


def _run_name(out_dir: Path) -> str:
    """The config's name from config.json (written by the trainer), else the folder's name."""
    try:
        return str(json.loads((out_dir / "config.json").read_text())["name"])
    except (OSError, ValueError, KeyError, TypeError):
        return out_dir.name


def _figure(width: float, height: float, ncols: int = 1):
    """A figure on the Agg canvas (no pyplot: no global state, nothing to close, no display needed)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    axes = [fig.add_subplot(1, ncols, i + 1) for i in range(ncols)]
    return fig, axes


def plot_losses(out_dir: Path | str, log: Callable[[str], None] | None = None) -> Path | None:
    """plots/loss.png: log10 of every step's training loss (lossi.csv) with the eval points of metrics.jsonl
    on the same axes, as the lectures plot them. Never fails a finished run."""
    out_dir = Path(out_dir)
    path = out_dir / PLOTS_DIR / "loss.png"
    try:
        if not draw_curve(out_dir, path, size=(8, 4.5), dpi=110):
            return None
    except Exception as exc:  # a plot is never worth losing a finished training run over
        if log is not None:
            log(f"warning: could not plot the loss curves ({type(exc).__name__}: {exc})")
        return None
    if log is not None:
        log(f"loss curves: {path}")
    return path


def smoothed(values: list[float], window: int) -> tuple[list[int], list[float]]:
    """Means of consecutive windows (the lectures' `lossi.view(-1, 1000).mean(1)`): (window ends, means)."""
    ends, means = [], []
    for i in range(0, len(values) - window + 1, window):
        ends.append(i + window - 1)
        means.append(sum(values[i : i + window]) / window)
    return ends, means


def draw_curve(out_dir: Path, path: Path, size: tuple[float, float] = (8, 4.5), dpi: int = 110) -> bool:
    """Draw the run's loss curve to `path`; False when the run recorded nothing to draw."""
    from training.curves import read_lossi

    rows = [r for r in read_jsonl(out_dir / "metrics.jsonl") if "step" in r]
    steps, lossi = read_lossi(out_dir)
    if not rows and not steps:
        return False
    fig, (ax,) = _figure(*size)
    if steps:
        logs = [math.log10(v) if v > 0 and math.isfinite(v) else math.nan for v in lossi]
        ax.plot(steps, logs, color="tab:blue", alpha=0.25, lw=0.6, label="train, every step (lossi)")
        window = max(1, len(logs) // 100)
        if window > 1:
            ends, means = smoothed(logs, window)
            ax.plot([steps[i] for i in ends], means, color="tab:blue", lw=1.6, label=f"train, mean of {window} steps")
    series = (("train_loss", "o", "train (eval)"), ("val_loss", "s", "val (eval)"), ("val_loss_ema", "^", "val, EMA"))
    for key, marker, name in series:
        if any(key in r for r in rows):
            values = [math.log10(r[key]) if r.get(key, 0) > 0 else math.nan for r in rows]
            ax.plot([r["step"] for r in rows], values, marker + "-", ms=4, lw=1, label=name)
    if rows:
        best = min(min(r.get("val_loss", math.inf), r.get("val_loss_ema", math.inf)) for r in rows)
        if math.isfinite(best) and best > 0:
            ax.axhline(math.log10(best), color="grey", lw=0.8, ls=":", label=f"best val {best:.4f}")
    ax.set(xlabel="step", ylabel="log10(loss)", title=f"{_run_name(out_dir)}: loss (nats/char, log10)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    return True


def layer_type(label: str) -> tuple[str, str]:
    """("blocks.mlp.c_fc.weight", "3") for "blocks.3.mlp.c_fc.weight": the panel and the line of a label."""
    numbers = re.findall(r"\.(\d+)(?=[.\s]|$)", label)
    kind = re.sub(r"\.\d+(?=[.\s]|$)", "", label)
    return kind, ("layer " + ".".join(numbers)) if numbers else label


def _panels(labels: list[str]) -> dict[str, list[str]]:
    """Labels grouped by layer type; types with a single member share one "other" panel."""
    groups: dict[str, list[str]] = {}
    for label in labels:
        groups.setdefault(layer_type(label)[0], []).append(label)
    singles = [g[0] for g in groups.values() if len(g) == 1]
    panels = {kind: g for kind, g in groups.items() if len(g) > 1}
    if singles:
        panels["other"] = singles
    return panels


def _line_name(panel: str, label: str) -> str:
    return label if panel == "other" else layer_type(label)[1]


def plot_diagnostics(
    out_dir: Path,
    records: list[dict[str, Any]],
    first: dict[str, Any] | None,
    last: dict[str, Any] | None,
) -> list[Path]:
    """activations.png, activation_grads.png, weight_grads.png (histograms at the first and last recorded
    step: one row per layer type, one column per step) and update_ratio.png (log10 update:data per weight
    matrix over time, one panel per layer type). The four figures share their layout and layer order, so
    they are drawn in one place."""
    plots = Path(out_dir) / PLOTS_DIR
    plots.mkdir(parents=True, exist_ok=True)
    written = []
    if first is not None and last is not None:
        act_stats = {r["step"]: r["activations"] for r in records}
        param_stats = {r["step"]: r["params"] for r in records}
        specs = [
            ("activations", "activations", _act_legend(act_stats)),
            ("activation_grads", "activation gradients", _grad_legend(act_stats)),
            ("weight_grads", "weight gradients", _weight_legend(param_stats)),
        ]
        for key, title, legend in specs:
            labels = list(dict.fromkeys([*first[key], *last[key]]))
            if not labels:
                continue
            panels = _panels(labels)
            fig, axes = _grid(len(panels), 2, width=15, row_height=2.8)
            for row, (panel, members) in zip(axes, panels.items(), strict=True):
                for ax, hists in zip(row, (first, last), strict=True):
                    for label in members:
                        if label in hists[key]:
                            h = hists[key][label]
                            name = _line_name(panel, label)
                            ax.plot(h["x"], h["density"], label=f"{name}: {legend(hists['step'], label)}")
                    ax.set_title(f"{panel}: {title}, step {hists['step']}", fontsize=9)
                    ax.set(xlabel="value", ylabel="density")
                    ax.grid(alpha=0.3)
                    ax.legend(**OUTSIDE)
            path = plots / f"{key}.png"
            fig.savefig(path, dpi=100)
            written.append(path)
    series: dict[str, tuple[list[int], list[float]]] = {}
    for r in records:
        for name, p in r["params"].items():
            value = p.get("update_ratio_log10")
            if len(p["shape"]) == 2 and value is not None:
                steps, values = series.setdefault(name, ([], []))
                steps.append(r["step"])
                values.append(value)
    if series:
        panels = _panels(list(series))
        fig, axes = _grid(len(panels), 1, width=10, row_height=2.6)
        for (ax,), (panel, members) in zip(axes, panels.items(), strict=True):
            for name in members:
                ax.plot(*series[name], label=_line_name(panel, name))
            ax.axhline(UPDATE_RATIO_GUIDE, color="black", ls="--", lw=1, label="1e-3 guide")
            ax.set_title(f"{panel}: update:data ratio", fontsize=9)
            ax.set(xlabel="step", ylabel="log10(update/weight std)")
            ax.grid(alpha=0.3)
            ax.legend(**OUTSIDE)
        path = plots / "update_ratio.png"
        fig.savefig(path, dpi=100)
        written.append(path)
    return written


def _grid(rows: int, cols: int, width: float, row_height: float):
    """rows x cols axes on an Agg figure, as a list of rows."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, max(3.2, row_height * rows)), layout="constrained")
    return fig, [[fig.add_subplot(rows, cols, r * cols + c + 1) for c in range(cols)] for r in range(rows)]


def _act_legend(stats: dict[int, dict[str, Any]]) -> Callable[[int, str], str]:
    def legend(step: int, label: str) -> str:
        s = stats.get(step, {}).get(label, {})
        text = f"mean {s.get('mean', math.nan):+.2f}, std {s.get('std', math.nan):.2f}"
        return text + (f", saturated {100 * s['saturation']:.1f}%" if "saturation" in s else "")

    return legend


def _grad_legend(stats: dict[int, dict[str, Any]]) -> Callable[[int, str], str]:
    def legend(step: int, label: str) -> str:
        return f"std {stats.get(step, {}).get(label, {}).get('grad_std', math.nan):.2e}"

    return legend


def _weight_legend(stats: dict[int, dict[str, Any]]) -> Callable[[int, str], str]:
    def legend(step: int, name: str) -> str:
        p = stats.get(step, {}).get(name, {})
        ratio = p.get("grad_data")
        return (
            f"{tuple(p.get('shape', ()))} grad std {p.get('grad_std', math.nan):.2e}, "
            f"grad:data {ratio if ratio is not None else math.nan:.2e}"
        )

    return legend
