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

from training.plots import plot_diagnostics, plot_losses, read_jsonl

__all__ = ["Diagnostics", "activation_taps", "plot_diagnostics", "plot_losses"]

RECORDS_FILE = "diagnostics.jsonl"
SATURATION = 0.97  # |tanh| above this: the unit passes almost no gradient
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

    def __init__(
        self,
        model: nn.Module,
        out_dir: Path | str,
        every: int = 100,
        on_record: Callable[[dict[str, Any]], None] | None = None,
    ):
        self.model = model
        self.on_record = on_record  # e.g. the TensorBoard writer (training.curves)
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
            if self.on_record is not None:
                self.on_record(record)
        self._pending, self._before = None, {}
        self._armed = self.records_step(step + 1)

    def finish(self) -> list[Path]:
        """Write diagnostics.jsonl (merged after any records of an earlier, resumed part) and the plots."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        path = self.out / RECORDS_FILE
        first = self.records[0]["step"] if self.records else math.inf
        kept = [r for r in read_jsonl(path) if r.get("step", math.inf) < first and "hist" not in r]
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
