"""The training loop: AdamW, warmup + cosine LR, clipping, eval, best checkpoint, resume, DDP."""

from __future__ import annotations

import json
import math
import os
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

from training.checkpoint import CheckpointMeta, SplitInfo, load_checkpoint, load_state, save_checkpoint
from training.config import TrainConfig
from training.data import Splits, Vocab, load_corpus, split_corpus
from training.diagnostics import plot_losses
from training.nets import build, n_params
from training.sample import sample_texts
from training.tasks import Task

INITIAL_LOSS_TOLERANCE = 0.2


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup to learning_rate, then cosine decay to min_lr at decay_iters, then flat."""
    if step < cfg.warmup_iters:
        return cfg.learning_rate * (step + 1) / (cfg.warmup_iters + 1)
    if step >= cfg.decay_iters:
        return cfg.min_lr
    ratio = (step - cfg.warmup_iters) / max(1, cfg.decay_iters - cfg.warmup_iters)
    return cfg.min_lr + 0.5 * (1 + math.cos(math.pi * ratio)) * (cfg.learning_rate - cfg.min_lr)


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """Weight decay on matrices and embeddings (dim >= 2) only, never on biases and norm gains."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=cfg.learning_rate, betas=(cfg.beta1, cfg.beta2))


def pick_device(choice: str) -> str:
    if choice == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if choice == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda: no CUDA device is available")
    return choice


class Run:
    """Everything a training run needs, set up once: data, vocab, task, model, output folder."""

    def __init__(self, cfg: TrainConfig, out: Path):
        self.cfg, self.out = cfg, Path(out)
        corpus = load_corpus(cfg.dataset, cfg.data, cfg.format)
        self.vocab = Vocab.build(corpus.text, corpus.format)
        self.splits: Splits = split_corpus(corpus, self.vocab, cfg.split_seed)
        self.corpus = corpus
        self.model_config = {**cfg.model, "vocab_size": self.vocab.size}
        self.model = build(cfg.arch, self.model_config)
        self.block_size = self.model.cfg.block_size
        self.task = Task(cfg.arch, self.splits, self.block_size, self.vocab.boundary)

    def meta(self, **fields) -> CheckpointMeta:
        return CheckpointMeta(
            arch=self.cfg.arch,
            model=self.model.cfg.model_dump(),
            vocab=list(self.vocab.chars),
            format=self.corpus.format,
            boundary_token=self.vocab.boundary,
            data=SplitInfo(
                name=self.corpus.name,
                sha256=self.corpus.sha256,
                split_seed=self.splits.seed,
                split_fractions=self.splits.fractions,
            ),
            train_config=self.cfg.model_dump(),
            **fields,
        )


def train(cfg: TrainConfig, out: Path, resume: bool = False, log=print) -> CheckpointMeta:
    """Train, keep the best checkpoint by val loss in `out`, evaluate every split exactly at the end."""
    ddp = int(os.environ.get("WORLD_SIZE", "1")) > 1
    rank = 0
    device = pick_device(cfg.device)
    if ddp:
        dist.init_process_group("nccl" if device == "cuda" else "gloo")
        rank = dist.get_rank()
        if device == "cuda":
            device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
            torch.cuda.set_device(device)
    master = rank == 0
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    run = Run(cfg, out)
    model = run.model.to(device)
    optimizer = make_optimizer(model, cfg)
    ema = weight_average(model, cfg.ema_decay)
    kept = ema.module if ema is not None else model  # the weights that are evaluated and checkpointed
    gen = torch.Generator().manual_seed(cfg.seed + rank)  # batch sampling: each rank its own stream
    if ddp:  # same initial weights on every rank (above), but each rank its own dropout masks
        torch.manual_seed(cfg.seed + 1 + rank)
    out = Path(out)
    step, best_val, wall_before = 0, float("inf"), 0.0
    if resume:
        state = load_state(out)
        if state is None:
            raise FileNotFoundError(f"--resume: {out} holds no resumable state")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if ema is not None:
            if "ema" not in state:
                raise ValueError(f"--resume: {out} was trained without ema_decay; resume it with ema_decay=0")
            ema.load_state_dict(state["ema"])
        step, best_val = int(state["step"]), float(state["best_val"])
        wall_before = float(state["wall_seconds"])
        gen.set_state(own_state(state["generators"], rank))
        torch.set_rng_state(own_state(state["torch_rng"], rank))
    elif master:
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.jsonl").write_text("")
    if master:
        (out / "config.json").write_text(json.dumps(cfg.model_dump(), indent=2) + "\n")
        log(
            f"{cfg.name}: {cfg.arch}, {n_params(model):,} parameters, vocab {run.vocab.size}, "
            f"block {run.block_size}, device {device}" + (f", {dist.get_world_size()} processes" if ddp else "")
        )
    train_model: nn.Module = model
    if cfg.compile:
        train_model = torch.compile(model)
    if ddp:
        train_model = DistributedDataParallel(train_model)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.startswith("cuda") else nullcontext()

    diagnostics = None
    if cfg.diagnostics and master:
        from training.diagnostics import Diagnostics

        diagnostics = Diagnostics(model, out)

    if master and step == 0:
        check_initial_loss(run, model, device, log)

    def save(meta_step: int, val: float | None, train_loss: float | None) -> None:
        """Write the resumable state; the weights file only when val improved (best checkpoint)."""
        state = {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "step": meta_step,
            "best_val": best_val,
            "wall_seconds": wall_before + time.time() - t0,
            "generators": gathered_states(gen.get_state(), ddp),
            "torch_rng": gathered_states(torch.get_rng_state(), ddp),
        }
        if ema is not None:
            state["ema"] = ema.state_dict()
        if master:
            if val is not None:
                meta = run.meta(step=meta_step, train_loss=train_loss, val_loss=val, device=device)
                save_checkpoint(out, kept, meta, state)
            else:
                torch.save(state, out / "state.pt")

    world = dist.get_world_size() if ddp else 1
    tokens = 0  # trained targets since the last eval (padding excluded), this rank's; x world for the rate
    t0 = time.time()
    t_last = t0
    bar = tqdm(total=cfg.max_iters, initial=step, disable=not master, dynamic_ncols=True, unit="step")
    model.train()
    try:
        while step < cfg.max_iters:
            lr = lr_at(step, cfg)
            for group in optimizer.param_groups:
                group["lr"] = lr
            x, y = run.task.batch("train", cfg.batch_size, gen)
            tokens += int((y != -1).sum())
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with autocast:
                _, loss = train_model(x, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            if diagnostics is not None:
                diagnostics.before_step(step)
            optimizer.step()
            if ema is not None:
                ema.update_parameters(model)
            if diagnostics is not None:
                diagnostics.after_step(step, lr, loss.item())
            step += 1
            if master and step % 10 == 0:
                bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{lr:.2e}", refresh=False)
                bar.update(step - bar.n)
            if step % cfg.eval_interval == 0 or step == cfg.max_iters:
                losses = estimate_loss(run, kept, device, autocast)
                now = time.time()
                tok_s = tokens * world / (now - t_last)
                t_last, tokens = now, 0
                improved = losses["val"] < best_val
                best_val = min(best_val, losses["val"])
                record = {
                    "step": step,
                    "train_loss": round(losses["train"], 5),
                    "val_loss": round(losses["val"], 5),
                    "lr": lr,
                    "tokens_per_s": round(tok_s, 1),
                    "elapsed_s": round(wall_before + now - t0, 2),
                }
                if master:
                    with open(out / "metrics.jsonl", "a") as fh:
                        fh.write(json.dumps(record) + "\n")
                    bar.write(
                        f"step {step}: train {losses['train']:.4f}, val {losses['val']:.4f}, "
                        f"{tok_s:,.0f} tok/s" + (" (best)" if improved else "")
                    )
                save(step, losses["val"] if improved else None, losses["train"])
    except KeyboardInterrupt:
        bar.close()
        save(step, None, None)
        if master:
            log(f"interrupted at step {step}: state saved in {out}; continue with --resume")
        raise
    bar.close()
    if diagnostics is not None:
        diagnostics.finish()
    if ddp:
        dist.barrier()
        dist.destroy_process_group()
    if not master:
        return run.meta(step=step)
    return finish(run, out, device, wall_before + time.time() - t0, log)


def finish(run: Run, out: Path, device: str, wall: float, log) -> CheckpointMeta:
    """Evaluate the best checkpoint exactly on every split, record it, print samples."""
    best, meta = load_checkpoint(out, device=device)
    losses = {split: run.task.exact_loss(best, split, device) for split in ("train", "val", "test")}
    meta = meta.model_copy(
        update={
            "train_loss": losses["train"],
            "val_loss": losses["val"],
            "test_loss": losses["test"],
            "wall_seconds": wall,
        }
    )
    save_checkpoint(out, best, meta)
    log(
        f"best checkpoint (step {meta.step}): train {losses['train']:.4f}, val {losses['val']:.4f}, "
        f"test {losses['test']:.4f} nats/char; {wall:.0f} s"
    )
    if run.cfg.samples:
        for text in sample_texts(best, meta, n=run.cfg.samples, seed=run.cfg.seed, device=device):
            log(f"  {text!r}" if meta.format == "stream" else f"  {text}")
    plot_losses(out, log)  # plots/loss.png from metrics.jsonl, for every run
    return meta


@torch.no_grad()
def estimate_loss(run: Run, model: nn.Module, device: str, autocast) -> dict[str, float]:
    """Mean loss over eval_iters fixed random batches of train and val, in eval mode."""
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
    model.train()
    return out


@torch.no_grad()
def check_initial_loss(run: Run, model: nn.Module, device: str, log) -> float:
    """The first loss should be about ln(vocab_size); far above means a confidently wrong softmax."""
    x, y = run.task.batch("train", run.cfg.batch_size, torch.Generator().manual_seed(0))
    model.eval()
    _, loss = model(x.to(device), y.to(device))
    model.train()
    expected = math.log(run.vocab.size)
    value = loss.item()
    note = f"initial loss {value:.4f}, expected ln({run.vocab.size}) = {expected:.4f}"
    if abs(value - expected) > INITIAL_LOSS_TOLERANCE * expected:
        log(f"WARNING: {note}: more than 20% off; check the output layer's initialisation")
    else:
        log(note)
    return value


def weight_average(model: nn.Module, decay: float) -> AveragedModel | None:
    """An EMA of the weights (Polyak averaging): on small data it generalises better than the last step."""
    if decay <= 0:
        return None
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


def gathered_states(state: torch.Tensor, ddp: bool) -> list[torch.Tensor]:
    """Every rank's RNG state, so that a resumed DDP run continues each rank's own stream."""
    if not ddp:
        return [state]
    states = [torch.empty_like(state) for _ in range(dist.get_world_size())]
    dist.all_gather_object(states, state)
    return states


def own_state(states: list[torch.Tensor] | torch.Tensor, rank: int) -> torch.Tensor:
    """This rank's saved RNG state; a run resumed on more ranks than it was saved from reuses rank 0's."""
    if isinstance(states, torch.Tensor):  # state.pt from before per-rank dropout streams: one state
        return states
    return states[rank] if rank < len(states) else states[0]
