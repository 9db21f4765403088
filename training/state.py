"""The resumable state of a run (state.pt) and the process group of a data-parallel one.

state.pt holds plain tensors and numbers (loaded with weights_only=True): the raw weights, AdamW's
moments, the EMA, the TrainState fields and every rank's RNG streams, so that `--resume` continues
exactly where the last eval left off (tests/training/test_training_cli.py checks it bit for bit).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from training.checkpoint import STATE_FILE, load_state
from training.config import TrainConfig, resume_mismatch
from training.step import TrainState

CONFIG_FILE = "config.json"


@dataclass(frozen=True)
class Processes:
    """One process, or this rank of a torchrun group (gloo on CPU, NCCL on CUDA)."""

    ddp: bool = False
    rank: int = 0
    world: int = 1
    device: str = "cpu"

    @classmethod
    def start(cls, device: str) -> Processes:
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            return cls(device=device)
        dist.init_process_group("nccl" if device == "cuda" else "gloo")
        if device == "cuda":
            device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
            torch.cuda.set_device(device)
        return cls(True, dist.get_rank(), dist.get_world_size(), device)

    @property
    def master(self) -> bool:
        return self.rank == 0

    def agree(self, ok: bool) -> bool:
        """True only when every rank says True (one tiny all-reduce)."""
        if not self.ddp:
            return ok
        flag = torch.tensor([1.0 if ok else 0.0], device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        return bool(flag.item() > 0)

    def broadcast(self, values: list[float]) -> list[float]:
        """Rank 0's numbers on every rank (the eval result and the save decision)."""
        if not self.ddp:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.broadcast(t, src=0)
        return t.tolist()

    def gather(self, state: torch.Tensor) -> list[torch.Tensor]:
        """Every rank's RNG state, so that a resumed DDP run continues each rank's own stream."""
        if not self.ddp:
            return [state]
        states = [torch.empty_like(state) for _ in range(self.world)]
        dist.all_gather_object(states, state)
        return states

    def close(self, barrier: bool = True) -> None:
        if self.ddp and dist.is_initialized():
            if barrier:
                dist.barrier()
            dist.destroy_process_group()


def snapshot(
    model: nn.Module, optimizer, ema, state: TrainState, gen: torch.Generator, procs: Processes, wall: float
) -> dict[str, Any]:
    """state.pt's content (a collective under DDP: every rank must call it)."""
    snap = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        **{k: v for k, v in asdict(state).items() if k != "wall_before"},
        "wall_seconds": wall,
        "generators": procs.gather(gen.get_state()),
        "torch_rng": procs.gather(torch.get_rng_state()),
    }
    if ema is not None:
        snap["ema"] = ema.state_dict()
    return snap


def restore(
    out: Path, cfg: TrainConfig, model: nn.Module, optimizer, ema, gen: torch.Generator, rank: int
) -> TrainState:
    """Load state.pt into the fresh model/optimizer/EMA/RNGs; one-line errors for what cannot continue."""
    saved_cfg = out / CONFIG_FILE
    if saved_cfg.is_file():
        diffs = resume_mismatch(json.loads(saved_cfg.read_text()), cfg)
        if diffs:
            raise ValueError(
                f"--resume: {out} was trained with another config: {'; '.join(diffs)}; "
                "resume with the same values or train into another --out"
            )
    snap = load_state(out)
    if snap is None:
        raise FileNotFoundError(f"--resume: {out} holds no resumable state ({STATE_FILE})")
    if ema is not None and "ema" not in snap:
        raise ValueError(f"--resume: {out} was trained without ema_decay; resume it with ema_decay=0")
    try:
        model.load_state_dict(snap["model"])
    except RuntimeError as exc:  # torch: a header line, then one line per mismatched tensor
        detail = [ln.strip() for ln in str(exc).splitlines() if ln.strip()][1:2]
        raise ValueError(f"--resume: the weights in {out} do not fit this model ({' '.join(detail)})") from None
    optimizer.load_state_dict(snap["optimizer"])
    if ema is not None:
        ema.load_state_dict(snap["ema"])
    gen.set_state(own_state(snap["generators"], rank))
    torch.set_rng_state(own_state(snap["torch_rng"], rank))
    return TrainState(
        step=int(snap["step"]),
        best_val=float(snap["best_val"]),
        best_step=int(snap.get("best_step", 0)),
        wall_before=float(snap["wall_seconds"]),
    )


def own_state(states: list[torch.Tensor] | torch.Tensor, rank: int) -> torch.Tensor:
    """This rank's saved RNG state; a run resumed on more ranks than it was saved from reuses rank 0's."""
    if isinstance(states, torch.Tensor):  # state.pt from before per-rank dropout streams: one state
        return states
    return states[rank] if rank < len(states) else states[0]
