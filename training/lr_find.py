"""`python -m training lr-find`: sweep the learning rate exponentially and suggest one (makemore part 2).

A fresh model (the config's, seeded as training would be) takes `--steps` AdamW steps with the LR
growing from `--min-lr` to `--max-lr` as 10**linspace(log10 min, log10 max, steps). The loss per
step is smoothed with a bias-corrected exponential moving average; the sweep stops early once the
smoothed loss exceeds 4x its best (the LR is past stable). The suggestion is **1/10 of the LR at the
minimum of the smoothed loss**: at the minimum the LR is already at the edge of stability, a tenth
of it trains fast and stays stable. The LR of steepest descent is reported alongside.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from training.cli import CLIError
from training.config import load_config
from training.trainer import Run, make_optimizer, pick_device

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
        for group in optimizer.param_groups:
            group["lr"] = float(lr)
        x, y = run.task.batch("train", cfg.batch_size, gen)
        _, loss = model(x.to(device), y.to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        value = loss.item()
        if not math.isfinite(value):
            stopped = f"loss became {value} at lr {lr:.3g}"
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


def suggest(lrs: list[float], smoothed: list[float]) -> dict[str, Any]:
    """1/10 of the LR at the smoothed minimum; also the LR where the smoothed loss falls fastest."""
    i_min = int(np.argmin(smoothed))
    result: dict[str, Any] = {
        "lr_at_min_loss": lrs[i_min],
        "min_smoothed_loss": smoothed[i_min],
        "suggested_lr": lrs[i_min] / 10,
        "rule": "1/10 of the LR at the minimum of the smoothed loss",
        "still_falling_at_max_lr": i_min == len(lrs) - 1,
    }
    if i_min >= 2:
        slope = np.gradient(np.array(smoothed[: i_min + 1]), np.log10(lrs[: i_min + 1]))
        result["steepest_lr"] = lrs[int(np.argmin(slope))]
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
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
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
    if result["still_falling_at_max_lr"]:
        print("note: the loss was still falling at --max-lr; sweep higher for a better suggestion")
    print(f"plot: {out / 'lr_find.png'}, numbers: {out / 'lr_find.json'}")
    print(f"suggested learning_rate = {result['suggested_lr']:.3e} ({result['rule']})")
    return 0
