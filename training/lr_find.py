"""`python -m training lr-find`: sweep the learning rate exponentially and suggest one (makemore part 2).

A fresh model (the config's, seeded as training would be) takes `--steps` steps of the trainer's own
`train_step` with the LR growing from `--min-lr` to `--max-lr` as 10**linspace(log10 min, log10 max,
steps). The loss per step is smoothed with a bias-corrected exponential moving average; the sweep stops
early once the smoothed loss exceeds 4x its best (the LR is past stable).

The suggestion is **1/3 of the LR at the minimum of the smoothed loss**. Measured on the five shipped
configs (sweeps 1e-5..10 of 300 steps, 200 for shakespeare_gpt; then 300 training steps at each rate,
200 for shakespeare_gpt, warmup 30, cosine to lr/10, 1 thread), final val loss:

    config           config's rate     min/3             min/10 (the old rule)
    names_bigram     0.3     2.4588    0.218   2.4573    0.0655  2.4571
    names_mlp        3e-3    2.4183    5.67e-3 2.3819    1.70e-3 2.4725
    names_wavenet    3e-3    2.3175    5.67e-3 2.2991    1.70e-3 2.3600
    names_gpt        1e-3    2.2679    1.23e-3 2.2623    3.70e-4 2.3117
    shakespeare_gpt  2e-3    2.3503    2.44e-3 2.3556    -

min/3 lands within 2x of every config's hand-tuned rate and matches or beats it (shakespeare_gpt: 0.005
behind); min/10 lost 0.04-0.05 nats on the three deeper nets. Short runs favour higher rates, so treat the
suggestion as a starting point for long runs. The steepest descent (away from the curve's edges) is
reported too; it moved 10x between configs whose best rates agree, so it is not the suggestion.

The default sweep starts at 1e-7: from 1e-3 (the old default) names_gpt's loss was still falling from its
initial value (3.34 -> 2.79 in 12 steps), so "steepest" sat at the left edge; from 1e-5 it still fell
(3.34 -> 3.27); from 1e-7 the curve starts flat. A steepest point at the edge is reported as such.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from training.config import load_config
from training.errors import CLIError
from training.run import Run, pick_device, set_threads
from training.step import Diverged, make_optimizer, train_step

SMOOTHING = 0.9  # EMA factor: ~10-step memory, little lag on a 100-300 step sweep
DIVERGENCE = 4.0  # stop when the smoothed loss exceeds this multiple of the best so far


def sweep(run: Run, steps: int, min_lr: float, max_lr: float, device: str = "cpu") -> dict[str, Any]:
    """Train run.model for up to `steps` steps at exponentially growing LR; losses per step."""
    cfg = run.cfg
    model = run.model.to(device)
    optimizer = make_optimizer(model, cfg)
    gen = torch.Generator().manual_seed(cfg.seed)
    lrs = np.logspace(math.log10(min_lr), math.log10(max_lr), steps)
    tried, losses, smoothed = [], [], []
    avg, best, stopped = 0.0, math.inf, None
    model.train()
    for i, lr in enumerate(lrs):
        x, y = run.task.batch("train", cfg.batch_size, gen)
        try:
            value = train_step(model, optimizer, (x.to(device), y.to(device)), float(lr), cfg.grad_clip)
        except Diverged as exc:
            stopped = str(exc)
            break
        avg = SMOOTHING * avg + (1 - SMOOTHING) * value
        smooth = avg / (1 - SMOOTHING ** (i + 1))
        tried.append(float(lr))
        losses.append(value)
        smoothed.append(smooth)
        best = min(best, smooth)
        if smooth > DIVERGENCE * best:
            stopped = f"smoothed loss {smooth:.3f} > {DIVERGENCE:g}x best {best:.3f} at lr {lr:.3g}"
            break
    return {"lrs": tried, "losses": losses, "smoothed": smoothed, "stopped": stopped}


SUGGEST_FRACTION = 1 / 3  # of the LR at the smoothed minimum (see the module docstring for the measurement)


def suggest(lrs: list[float], smoothed: list[float]) -> dict[str, Any]:
    """1/3 of the LR at the smoothed minimum; also the LR where the smoothed loss falls fastest, away
    from the first and last 10% of the descent (the edges are where smoothing lag makes slopes lie)."""
    i_min = int(np.argmin(smoothed))
    result: dict[str, Any] = {
        "lr_at_min_loss": lrs[i_min],
        "min_smoothed_loss": smoothed[i_min],
        "suggested_lr": lrs[i_min] * SUGGEST_FRACTION,
        "rule": "1/3 of the LR at the minimum of the smoothed loss",
        "still_falling_at_max_lr": i_min == len(lrs) - 1,
    }
    if i_min >= 4:
        slope = np.gradient(np.array(smoothed[: i_min + 1]), np.log10(lrs[: i_min + 1]))
        lo, hi = int(0.1 * (i_min + 1)), max(int(0.1 * (i_min + 1)) + 1, int(0.9 * (i_min + 1)))
        at = int(np.argmin(slope[lo:hi]))
        result["steepest_lr"] = lrs[lo + at]
        # at the window's first point: the loss was still falling from its initial value at --min-lr
        result["steepest_at_left_edge"] = at == 0
    return result


def plot(path: Path, result: dict[str, Any], title: str) -> None:
    """Loss vs LR on a log axis: raw losses, the smoothed curve, the suggestion."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 4.5), layout="constrained")
    ax = fig.add_subplot()
    ax.plot(result["lrs"], result["losses"], color="tab:blue", alpha=0.3, lw=1, label="loss")
    ax.plot(result["lrs"], result["smoothed"], color="tab:blue", lw=2, label="smoothed")
    marks = (("suggested_lr", "suggested", "tab:green", "--"), ("lr_at_min_loss", "minimum", "tab:red", ":"))
    for key, name, color, style in (*marks, ("steepest_lr", "steepest", "tab:orange", ":")):
        if key in result:
            ax.axvline(result[key], color=color, ls=style, label=f"{name} {result[key]:.2e}")
    # Keep the divergence tail from squashing the interesting part of the curve.
    low, high = min(result["losses"]), max(result["smoothed"][0], result["min_smoothed_loss"])
    ax.set_ylim(low - 0.05 * (high - low + 1e-9), high + 0.25 * (high - low + 1e-9))
    ax.set_xscale("log")
    ax.set(xlabel="learning rate", ylabel="training loss (nats/char)", title=title)
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    fig.savefig(path, dpi=110)


def lr_find_command(args: argparse.Namespace) -> int:
    """The lr-find subcommand: sweep, write lr_find.json and lr_find.png, print the suggestion last."""
    if args.steps < 2:
        raise CLIError("--steps must be >= 2")
    if not 0 < args.min_lr < args.max_lr:
        raise CLIError("need 0 < --min-lr < --max-lr")
    cfg = load_config(args.config, args.set, data=args.data, format=args.format)
    out = Path(args.out or f"runs/{cfg.name}-lr-find")
    device = pick_device(cfg.device)
    set_threads(cfg)
    torch.manual_seed(cfg.seed)
    run = Run(cfg, out)
    result = sweep(run, args.steps, args.min_lr, args.max_lr, device)
    if len(result["lrs"]) < 2:
        raise CLIError(f"lr-find: the loss diverged at once ({result['stopped']}); lower --min-lr")
    result.update(suggest(result["lrs"], result["smoothed"]))
    out.mkdir(parents=True, exist_ok=True)
    report = {
        "config": cfg.name,
        "arch": cfg.arch,
        "batch_size": cfg.batch_size,
        "min_lr": args.min_lr,
        "max_lr": args.max_lr,
        "steps_requested": args.steps,
        "steps_run": len(result["lrs"]),
        "smoothing": SMOOTHING,
        **result,
    }
    (out / "lr_find.json").write_text(json.dumps(report, indent=2) + "\n")
    plot(out / "lr_find.png", result, f"{cfg.name}: LR range test ({len(result['lrs'])} steps)")
    print(f"lr-find: {len(result['lrs'])} steps, lr {args.min_lr:g} -> {result['lrs'][-1]:.3g}")
    if result["stopped"]:
        print(f"stopped early: {result['stopped']}")
    print(f"minimum smoothed loss {result['min_smoothed_loss']:.4f} at lr {result['lr_at_min_loss']:.3e}")
    if "steepest_lr" in result:
        print(f"steepest descent at lr {result['steepest_lr']:.3e}")
    if result.get("steepest_at_left_edge"):
        print("note: the steepest descent is at the sweep's left edge (the loss was still falling from its initial "
              "value at --min-lr); sweep from a lower --min-lr")  # fmt: skip
    if result["still_falling_at_max_lr"]:
        print("note: the loss was still falling at --max-lr; sweep higher for a better suggestion")
    print(f"plot: {out / 'lr_find.png'}, numbers: {out / 'lr_find.json'}")
    print(f"suggested learning_rate = {result['suggested_lr']:.3e} ({result['rule']})")
    return 0
