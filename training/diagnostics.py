"""Training diagnostics (makemore part 3): activation, gradient and update statistics, and their plots.

`Diagnostics` is driven by the trainer (`--set diagnostics=true`): forward hooks capture the
activations of the nonlinearities on recorded steps only, `before_step` reads the (clipped) gradients
and snapshots the weights, `after_step` measures how far the optimizer moved them, `finish` writes
`diagnostics.jsonl` and the PNGs in `plots/`. Off-record steps cost one flag check per hook.

What healthy looks like (Karpathy, "Building makemore part 3"): tanh saturation of a few percent,
similar activation/gradient spreads across layers, and log10(update std / weight std) near -3.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

PLOTS_DIR = "plots"
RECORDS_FILE = "diagnostics.jsonl"
SATURATION = 0.97  # |tanh| above this: the unit passes almost no gradient
UPDATE_RATIO_GUIDE = -3.0  # log10 of the update:data ratio Karpathy calls about right
HIST_BINS = 60
# Early steps are where initialisation problems show; record them even when `every` is large.
EARLY_STEPS = frozenset({1, 2, 3, 5, 7, 10, 15, 20, 30, 50, 70})
ACTIVATION_MODULES: dict[type[nn.Module], str] = {
    nn.Tanh: "tanh",
    nn.GELU: "gelu",
    nn.ReLU: "relu",
    nn.SiLU: "silu",
    nn.Sigmoid: "sigmoid",
}


def activation_taps(model: nn.Module) -> list[tuple[str, nn.Module, str, str]]:
    """(label, module, "input" | "output", kind) for every nonlinearity's output in `model`.

    Activation modules (the WaveNet's nn.Tanh) are tapped at their output. The MLP and the GPT apply
    tanh / GELU functionally, so their activations are tapped where they enter the next layer: the
    MLP's `head` input and each GPT block's `mlp.c_proj` input. Those tensors are in the graph, so
    their gradients can be captured too.
    """
    from training.nets.gpt import MLP as GPTBlockMLP
    from training.nets.mlp import MLP

    taps: list[tuple[str, nn.Module, str, str]] = []
    for name, module in model.named_modules():
        kind = ACTIVATION_MODULES.get(type(module))
        if kind is not None:
            taps.append((f"{name} ({kind})", module, "output", kind))
        elif isinstance(module, MLP):
            taps.append((f"{_join(name, 'hidden')} (tanh)", module.head, "input", "tanh"))
        elif isinstance(module, GPTBlockMLP):
            taps.append((f"{_join(name, 'gelu')}", module.c_proj, "input", "gelu"))
    return taps


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _histogram(t: torch.Tensor, bins: int = HIST_BINS) -> dict[str, list[float]]:
    """Bin centres and densities of a tensor's values (what the course's histogram plots show)."""
    t = t.detach().float().flatten().cpu()
    # Mean +- 4 std (within the data's range): one outlier must not squash the bulk into a single bin.
    mean, spread = float(t.mean()), 4 * _std(t)
    lo, hi = max(float(t.min()), mean - spread), min(float(t.max()), mean + spread)
    if lo == hi:
        lo, hi = lo - 1e-6, hi + 1e-6
    counts, edges = torch.histogram(t, bins=bins, range=(lo, hi), density=True)
    centres = (edges[:-1] + edges[1:]) / 2
    return {"x": [round(v, 7) for v in centres.tolist()], "density": [round(v, 6) for v in counts.tolist()]}


def _std(t: torch.Tensor) -> float:
    return float(t.detach().float().std()) if t.numel() > 1 else 0.0


class Diagnostics:
    """Per-layer statistics every `every` steps (plus a few early steps), written and plotted at the end."""

    def __init__(self, model: nn.Module, out_dir: Path | str, every: int = 100):
        self.model = model
        self.out = Path(out_dir)
        self.every = max(1, every)
        self.records: list[dict[str, Any]] = []
        self.first_hists: dict[str, Any] | None = None
        self.last_hists: dict[str, Any] | None = None
        self._armed = True  # the next training forward is captured (the first one always is)
        self._acts: dict[str, dict[str, Any]] = {}
        self._act_grads: dict[str, dict[str, Any]] = {}
        self._pending: dict[str, Any] | None = None
        self._before: dict[str, torch.Tensor] = {}
        self._handles = []
        for label, module, where, kind in activation_taps(model):
            hook = self._make_hook(label, kind)
            if where == "output":
                self._handles.append(module.register_forward_hook(lambda m, i, o, h=hook: h(m, o)))
            else:
                self._handles.append(module.register_forward_pre_hook(lambda m, i, h=hook: h(m, i[0])))

    def records_step(self, step: int) -> bool:
        return step % self.every == 0 or step in EARLY_STEPS

    def _make_hook(self, label: str, kind: str) -> Callable[[nn.Module, torch.Tensor], None]:
        def hook(module: nn.Module, out: torch.Tensor) -> None:
            if not (self._armed and module.training and isinstance(out, torch.Tensor)):
                return
            t = out.detach().float()
            stats: dict[str, Any] = {"kind": kind, "mean": float(t.mean()), "std": _std(t)}
            if kind == "tanh":
                stats["saturation"] = float((t.abs() > SATURATION).float().mean())
            stats["hist"] = _histogram(t)
            self._acts[label] = stats
            if out.requires_grad:
                out.register_hook(lambda g: self._act_grads.__setitem__(label, _grad_stats(g)))

        return hook

    def before_step(self, step: int) -> None:
        """After backward (gradients are final, clipped), before optimizer.step()."""
        recording = self.records_step(step)
        self._armed = False
        if not recording:
            self._acts, self._act_grads = {}, {}
            return
        params: dict[str, Any] = {}
        grad_hists: dict[str, Any] = {}
        self._before = {}
        for name, p in self.model.named_parameters():
            data_std = _std(p)
            entry: dict[str, Any] = {"shape": list(p.shape), "data_std": data_std}
            if p.grad is not None:
                g = p.grad.detach()
                entry["grad_std"] = _std(g)
                if p.dim() == 2:
                    entry["grad_data"] = entry["grad_std"] / data_std if data_std > 0 else None
                    grad_hists[name] = _histogram(g)
            params[name] = entry
            self._before[name] = p.detach().clone()
        activations = {}
        for label, stats in self._acts.items():
            stats = {k: v for k, v in stats.items() if k != "hist"}
            if label in self._act_grads:
                stats["grad_std"] = self._act_grads[label]["std"]
            activations[label] = stats
        hists = {
            "step": step,
            "activations": {label: s["hist"] for label, s in self._acts.items()},
            "activation_grads": {label: g["hist"] for label, g in self._act_grads.items()},
            "weight_grads": grad_hists,
        }
        if self.first_hists is None:
            self.first_hists = hists
        self.last_hists = hists
        self._pending = {"step": step, "activations": activations, "params": params}
        self._acts, self._act_grads = {}, {}

    @torch.no_grad()
    def after_step(self, step: int, lr: float, loss: float) -> None:
        """After optimizer.step(): log10(update std / weight std) per parameter, then store the record."""
        if self._pending is not None and self._pending["step"] == step:
            record = self._pending
            for name, p in self.model.named_parameters():
                before = self._before.get(name)
                if before is None:
                    continue
                base = _std(before)
                change = _std(p.detach() - before)
                ratio = change / base if base > 0 else 0.0
                record["params"][name]["update_ratio_log10"] = math.log10(ratio) if ratio > 0 else None
            record.update(lr=lr, loss=loss)
            self.records.append(record)
        self._pending, self._before = None, {}
        self._armed = self.records_step(step + 1)

    def finish(self) -> list[Path]:
        """Write diagnostics.jsonl (merged after any records of an earlier, resumed part) and the plots."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        path = self.out / RECORDS_FILE
        first = self.records[0]["step"] if self.records else math.inf
        kept = [r for r in _read_jsonl(path) if r.get("step", math.inf) < first and "hist" not in r]
        records = kept + self.records
        lines = [json.dumps(r) for r in records]
        if self.first_hists is not None:
            lines.append(json.dumps({"hist": "first", **self.first_hists}))
        if self.last_hists is not None:
            lines.append(json.dumps({"hist": "last", **self.last_hists}))
        self.out.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(line + "\n" for line in lines))
        written = [path]
        if loss_png := plot_losses(self.out):
            written.append(loss_png)
        written += plot_diagnostics(self.out, records, self.first_hists, self.last_hists)
        return written


def _grad_stats(g: torch.Tensor) -> dict[str, Any]:
    return {"std": _std(g), "hist": _histogram(g)}


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
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
    """plots/loss.png from metrics.jsonl: train and val loss per eval. Never fails a finished run."""
    out_dir = Path(out_dir)
    rows = [r for r in _read_jsonl(out_dir / "metrics.jsonl") if "step" in r]
    if not rows:
        return None
    try:
        fig, (ax,) = _figure(7, 4.5)
        steps = [r["step"] for r in rows]
        for key, style in (("train_loss", "o-"), ("val_loss", "s-")):
            ax.plot(steps, [r.get(key) for r in rows], style, ms=3, label=key.removesuffix("_loss"))
        best = min(rows, key=lambda r: r.get("val_loss", math.inf))
        ax.axhline(best["val_loss"], color="grey", lw=0.8, ls=":", label=f"best val {best['val_loss']:.4f}")
        ax.set(xlabel="step", ylabel="loss (nats/char)", title=f"{_run_name(out_dir)}: loss")
        ax.grid(alpha=0.3)
        ax.legend()
        path = out_dir / PLOTS_DIR / "loss.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
    except Exception as exc:  # a plot is never worth losing a finished training run over
        if log is not None:
            log(f"warning: could not plot the loss curves ({type(exc).__name__}: {exc})")
        return None
    if log is not None:
        log(f"loss curves: {path}")
    return path


def plot_diagnostics(
    out_dir: Path,
    records: list[dict[str, Any]],
    first: dict[str, Any] | None,
    last: dict[str, Any] | None,
) -> list[Path]:
    """activations.png, activation_grads.png, weight_grads.png (histograms at the first and last
    recorded step) and update_ratio.png (log10 update:data per weight matrix over time)."""
    plots = Path(out_dir) / PLOTS_DIR
    plots.mkdir(parents=True, exist_ok=True)
    written = []
    if first is not None and last is not None:
        act_stats = {r["step"]: r["activations"] for r in records}
        param_stats = {r["step"]: r["params"] for r in records}
        specs = [
            ("activations", "activation distribution", _act_legend(act_stats)),
            ("activation_grads", "activation gradient distribution", _grad_legend(act_stats)),
            ("weight_grads", "weight gradient distribution", _weight_legend(param_stats)),
        ]
        for key, title, legend in specs:
            if not first[key] and not last[key]:
                continue
            fig, axes = _figure(13, 4.5, ncols=2)
            for ax, hists in zip(axes, (first, last), strict=True):
                for label, h in hists[key].items():
                    ax.plot(h["x"], h["density"], label=legend(hists["step"], label))
                ax.set(title=f"{title}, step {hists['step']}", xlabel="value", ylabel="density")
                ax.grid(alpha=0.3)
                ax.legend(fontsize=7)
            path = plots / f"{key}.png"
            fig.savefig(path, dpi=110)
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
        fig, (ax,) = _figure(9, 4.5)
        for name, (steps, values) in series.items():
            ax.plot(steps, values, label=name)
        ax.axhline(UPDATE_RATIO_GUIDE, color="black", ls="--", lw=1, label="1e-3 guide")
        ax.set(
            title="update:data ratio per weight matrix",
            xlabel="step",
            ylabel="log10(update std / weight std)",
        )
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        path = plots / "update_ratio.png"
        fig.savefig(path, dpi=110)
        written.append(path)
    return written


def _act_legend(stats: dict[int, dict[str, Any]]) -> Callable[[int, str], str]:
    def legend(step: int, label: str) -> str:
        s = stats.get(step, {}).get(label, {})
        text = f"{label}: mean {s.get('mean', math.nan):+.2f}, std {s.get('std', math.nan):.2f}"
        return text + (f", saturated {100 * s['saturation']:.1f}%" if "saturation" in s else "")

    return legend


def _grad_legend(stats: dict[int, dict[str, Any]]) -> Callable[[int, str], str]:
    def legend(step: int, label: str) -> str:
        return f"{label}: std {stats.get(step, {}).get(label, {}).get('grad_std', math.nan):.2e}"

    return legend


def _weight_legend(stats: dict[int, dict[str, Any]]) -> Callable[[int, str], str]:
    def legend(step: int, name: str) -> str:
        p = stats.get(step, {}).get(name, {})
        ratio = p.get("grad_data")
        return (
            f"{name} {tuple(p.get('shape', ()))}: grad std {p.get('grad_std', math.nan):.2e}, "
            f"grad:data {ratio if ratio is not None else math.nan:.2e}"
        )

    return legend
