"""Measuring a run: the initial-loss check, the periodic estimate (raw and EMA weights), and the exact
losses of the kept checkpoint on every split at the end, test_loss_unseen included."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from training.checkpoint import CheckpointMeta, load_checkpoint, save_checkpoint
from training.diagnostics import plot_losses
from training.run import Run
from training.sample import sample_texts

INITIAL_LOSS_TOLERANCE = 0.2


@torch.no_grad()
def estimate_loss(run: Run, model: nn.Module, device: str, autocast) -> dict[str, float]:
    """Mean loss over eval_iters fixed random batches of train and val, in eval mode."""
    was_training = model.training
    model.eval()
    out = {}
    for split in ("train", "val"):
        gen = torch.Generator().manual_seed(run.cfg.seed + 7919)  # same batches at every eval
        total = 0.0
        for _ in range(run.cfg.eval_iters):
            x, y = run.task.batch(split, run.cfg.batch_size, gen)
            with autocast:
                _, loss = model(x.to(device), y.to(device))
            total += loss.item()
        out[split] = total / run.cfg.eval_iters
    model.train(was_training)
    return out


def estimate_both(run: Run, model: nn.Module, ema: nn.Module | None, device: str, autocast) -> dict[str, float]:
    """train_loss/val_loss of the raw weights, and *_ema of the weight average when there is one."""
    raw = estimate_loss(run, model, device, autocast)
    record = {"train_loss": raw["train"], "val_loss": raw["val"]}
    if ema is not None:
        avg = estimate_loss(run, ema, device, autocast)
        record.update(train_loss_ema=avg["train"], val_loss_ema=avg["val"])
    return record


def better_weights(record: dict[str, float]) -> tuple[str, float]:
    """("ema" | "raw", its val loss): the EMA wins ties (it is what the config asked for)."""
    if "val_loss_ema" in record and record["val_loss_ema"] <= record["val_loss"]:
        return "ema", record["val_loss_ema"]
    return "raw", record["val_loss"]


@torch.no_grad()
def check_initial_loss(run: Run, model: nn.Module, device: str, log) -> float:
    """The first loss should be about ln(vocab_size); far above means a confidently wrong softmax."""
    x, y = run.task.batch("train", run.cfg.batch_size, torch.Generator().manual_seed(0))
    model.eval()
    _, loss = model(x.to(device), y.to(device))
    model.train()
    expected = math.log(run.vocab.size)
    value = loss.item()
    if run.cfg.init_from:  # trained weights: far below ln(vocab), as they should be
        log(f"initial loss {value:.4f} (fine-tuning {run.cfg.init_from}; ln({run.vocab.size}) = {expected:.4f})")
        return value
    note = f"initial loss {value:.4f}, expected ln({run.vocab.size}) = {expected:.4f}"
    if abs(value - expected) > INITIAL_LOSS_TOLERANCE * expected:
        log(f"WARNING: {note}: more than 20% off; check the output layer's initialisation")
    else:
        log(note)
    return value


def finish(run: Run, out: Path, device: str, wall: float, log) -> CheckpointMeta:
    """Evaluate the kept checkpoint exactly on every split, record it, print samples and the loss plot."""
    best, meta = load_checkpoint(out, device=device)
    losses = {split: run.task.exact_loss(best, split, device) for split in ("train", "val", "test")}
    unseen = run.task.exact_loss(best, "test_unseen", device) if run.task.has("test_unseen") else None
    meta = meta.model_copy(
        update={
            "train_loss": losses["train"],
            "val_loss": losses["val"],
            "test_loss": losses["test"],
            "test_loss_unseen": unseen,
            "wall_seconds": wall,
        }
    )
    save_checkpoint(out, best, meta)
    weights = "the weight average (EMA)" if meta.weights == "ema" else "the raw weights"
    log(
        f"kept checkpoint: step {meta.step}, {weights}: train {losses['train']:.4f}, val {losses['val']:.4f}, "
        f"test {losses['test']:.4f}"
        + (f", test_unseen {unseen:.4f}" if unseen is not None else "")
        + f" nats/char; {wall:.0f} s"
    )
    if run.cfg.samples:
        for text in sample_texts(best, meta, n=run.cfg.samples, seed=run.cfg.seed, device=device):
            log(f"  {text!r}" if meta.format == "stream" else f"  {text}")
    plot_losses(out, log)  # plots/loss.png from metrics.jsonl, for every run
    return meta
