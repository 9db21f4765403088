"""The training loop, read top to bottom like nanoGPT's train.py: set up, (resume), then for each step
the LR, a batch and `train_step`; every eval_interval steps evaluate (rank 0), keep the better weights
(raw or EMA) if val improved, save the resumable state; at the end, exact losses of the kept checkpoint.

The pieces: training.run (data, net, threads), training.step (the step, schedule, EMA), training.state
(state.pt, torchrun), training.evaluate (losses), training.curves (metrics.jsonl + TensorBoard).
"""

from __future__ import annotations

import json
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from training.checkpoint import CheckpointMeta, save_checkpoint, save_state
from training.config import TrainConfig
from training.curves import METRICS_FILE, Curves, keep_lossi
from training.evaluate import better_weights, check_initial_loss, estimate_both, estimate_loss, finish
from training.nets import n_params
from training.run import Run, pick_device, set_threads
from training.state import CONFIG_FILE, Processes, restore, snapshot
from training.step import (
    Diverged,
    TrainState,
    lr_at,
    make_optimizer,
    schedule_warning,
    train_step,
    weight_average,
)

__all__ = [  # what lr-find, the benchmark and the tests import from here
    "Run",
    "check_initial_loss",
    "estimate_loss",
    "lr_at",
    "make_optimizer",
    "pick_device",
    "train",
    "train_step",
]


def train(cfg: TrainConfig, out: Path, resume: bool = False, log=print) -> CheckpointMeta:
    """Train, keep the best checkpoint by val loss in `out`, evaluate every split exactly at the end.

    One function on purpose, as nanoGPT's train.py is one loop: the step, the eval-and-save and the
    interrupt and divergence handlers share the run's state (model, optimizer, EMA, generator, ranks, bar,
    curves); split, each part would take most of it as arguments.
    """
    out = Path(out)
    procs = Processes.start(pick_device(cfg.device))
    device, master = procs.device, procs.master
    say = log if master else (lambda *_: None)
    threads, busy = set_threads(cfg, procs.world)
    torch.manual_seed(cfg.seed)  # same initial weights on every rank
    run = Run(cfg, out)
    model = run.model.to(device)
    optimizer = make_optimizer(model, cfg)
    ema = weight_average(model, cfg.ema_decay)
    gen = torch.Generator().manual_seed(cfg.seed + procs.rank)  # batch sampling: each rank its own stream
    if procs.ddp:
        torch.manual_seed(cfg.seed + 1 + procs.rank)  # and its own dropout masks
    state = TrainState()
    if resume:
        state = restore(out, cfg, model, optimizer, ema, gen, procs.rank)
    elif master:
        out.mkdir(parents=True, exist_ok=True)
        (out / METRICS_FILE).write_text("")
    if master:
        keep_lossi(out, state.step if resume else None)
    if master:
        (out / CONFIG_FILE).write_text(json.dumps(cfg.model_dump(), indent=2) + "\n")
    say(
        f"{cfg.name}: {cfg.arch}, {n_params(model):,} parameters, vocab {run.vocab.size}, {run.describe_block()}, "
        f"device {device}, {threads} thread(s)" + (f" x {procs.world} processes" if procs.ddp else "")
    )
    for note in (busy, schedule_warning(cfg)):
        if note:
            say(note)
    if master and state.step == 0:
        check_initial_loss(run, model, device, say)

    curves = Curves(out, cfg.tensorboard, say) if master else None
    diagnostics = None
    if cfg.diagnostics and master:
        from training.diagnostics import Diagnostics

        diagnostics = Diagnostics(model, out, every=cfg.diagnostics_interval, on_record=curves.diagnostics)
    train_model: nn.Module = torch.compile(model) if cfg.compile else model
    if procs.ddp:
        train_model = DistributedDataParallel(train_model)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.startswith("cuda") else nullcontext()

    t0 = t_last = time.time()
    tokens = 0  # trained targets since the last eval (padding excluded), this rank's; x world for the rate
    # no bar when stderr is not a terminal (logs, CI): carriage-return frames there only bury errors
    bar = tqdm(
        total=cfg.max_iters, initial=state.step, disable=None if master else True, dynamic_ncols=True, unit="step"
    )
    model.train()
    try:
        while state.step < cfg.max_iters:
            lr = lr_at(state.step, cfg)
            x, y = run.task.batch("train", cfg.batch_size, gen)
            tokens += int((y != -1).sum())
            batch = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            hook = (lambda s=state.step: diagnostics.before_step(s)) if diagnostics else None
            loss = train_step(
                train_model, optimizer, batch, lr, cfg.grad_clip, autocast=autocast, ema=ema,
                before_update=hook, agree=procs.agree if procs.ddp else None,
            )  # fmt: skip
            if diagnostics is not None:
                diagnostics.after_step(state.step, lr, loss)
            state.step += 1
            if curves is not None:
                curves.step(state.step, loss)
            if master and state.step % 10 == 0:
                bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", refresh=False)
                bar.update(state.step - bar.n)
            if state.step % cfg.eval_interval != 0 and state.step != cfg.max_iters:
                continue
            # evaluate on rank 0; every rank learns its verdict (all keep the same TrainState)
            record: dict = {}
            if master:
                record = estimate_both(run, model, ema.module if ema else None, device, autocast)
            weights, val = better_weights(record) if master else ("raw", 0.0)
            improved, val = procs.broadcast([float(master and val < state.best_val), val])
            if improved:
                state.best_val, state.best_step = val, state.step
            now = time.time()
            if master:
                tok_s = tokens * procs.world / (now - t_last)
                record = {"step": state.step, **{k: round(v, 5) for k, v in record.items()}}
                record.update(best_val=round(state.best_val, 5), lr=lr, tokens_per_s=round(tok_s, 1))
                record["elapsed_s"] = round(state.wall_before + now - t0, 2)
                curves.eval(record)
                shown = f"val {record['val_loss']:.4f}" + (f" (ema {record['val_loss_ema']:.4f})" if ema else "")
                bar.set_postfix_str(f"loss {loss:.4f}, {shown}", refresh=False)
                bar.write(
                    f"step {state.step}: train {record['train_loss']:.4f}, {shown}, {tok_s:,.0f} tok/s"
                    + (f" (best: {weights} weights kept)" if improved else "")
                )
            t_last, tokens = now, 0
            snap = snapshot(model, optimizer, ema, state, gen, procs, state.wall_before + now - t0)
            if master:
                kept = ema.module if weights == "ema" else model
                meta = run.meta(step=state.step, train_loss=record.get(f"train_loss{'_ema' * (weights == 'ema')}"),
                                val_loss=val, device=device, weights=weights)  # fmt: skip
                if improved:
                    save_checkpoint(out, kept, meta, snap)
                else:
                    save_state(out, snap)
    except Diverged as exc:
        bar.close()
        procs.close(barrier=False)
        kept = f"the kept checkpoint is step {state.best_step} (val {state.best_val:.4f})"
        raise Diverged(
            f"training diverged at step {state.step + 1}: {exc}; stopped before updating the weights; "
            + (kept if state.best_step else "no checkpoint was saved")
            + f" in {out}; lower learning_rate or raise warmup_iters"
        ) from None
    except KeyboardInterrupt:
        bar.close()
        if not procs.ddp:  # one process: save where it stopped; under torchrun the peers are gone already
            save_state(out, snapshot(model, optimizer, ema, state, gen, procs, state.wall_before + time.time() - t0))
        say(f"interrupted at step {state.step}: state saved in {out} (under torchrun: at the last eval); "
            "continue with --resume")  # fmt: skip
        raise
    finally:
        if curves is not None:
            curves.close()
    bar.close()
    if diagnostics is not None:
        diagnostics.finish()
    procs.close()
    if not master:
        return run.meta(step=state.step)
    return finish(run, out, device, state.wall_before + time.time() - t0, say)
