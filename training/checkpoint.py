"""A training checkpoint on disk: what the trainer writes and `training export` / `sample` / `eval` read.

<dir>/model.safetensors   weights (safetensors: nothing is unpickled)
<dir>/checkpoint.json     architecture, net config, vocabulary, data split, metrics, provenance
<dir>/state.pt            optimizer + RNG state for --resume (plain tensors, loaded weights_only=True)

A model folder (models/NAME, manifest schema 2) reads as a checkpoint too: the same weights file, and
its manifest's net_config, vocabulary and data record stand in for checkpoint.json, so shipped models
can be sampled, evaluated and fine-tuned (`train --init-from`) without their run directory.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from safetensors.torch import load_model, save_model
from torch import nn

from contract import Arch
from training.nets import build

WEIGHTS_FILE = "model.safetensors"
MANIFEST_FILE = "manifest.json"  # contract.MANIFEST_FILE
META_FILE = "checkpoint.json"
STATE_FILE = "state.pt"


class CheckpointError(ValueError):
    """A checkpoint folder that cannot be used, with a one-line reason."""


class SplitInfo(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str  # built-in dataset name, or the user file's stem
    sha256: str
    split_seed: int
    split_fractions: tuple[float, float, float]


class LinesInfo(BaseModel):
    """How a GPT's block_size relates to `lines` data: chosen, and whether any sample was cut."""

    model_config = ConfigDict(extra="forbid")
    longest: int  # characters in the longest sample
    block_size: int
    block_size_from: Literal["config", "auto"]
    over_block: int  # samples longer than block_size - 1, which would be cut (training refuses them: 0)


class CheckpointMeta(BaseModel):
    model_config = ConfigDict(extra="forbid")
    arch: Arch
    model: dict[str, Any]  # the net's config, as accepted by training.nets.build
    vocab: list[str]
    format: Literal["lines", "stream"]
    boundary_token: int | None
    data: SplitInfo
    train_config: dict[str, Any]  # the resolved training config
    step: int = 0
    train_loss: float | None = None
    val_loss: float | None = None
    test_loss: float | None = None
    test_loss_unseen: float | None = None  # lines data: test samples that do not occur in the train split
    weights: Literal["raw", "ema"] = "raw"  # which weights were kept (with ema_decay: the better on val)
    lines: LinesInfo | None = None  # a GPT on lines data: its block size against the longest sample
    wall_seconds: float = 0.0
    device: str = "cpu"
    torch_version: str = torch.__version__
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))  # per checkpoint, not per import


def save_checkpoint(
    folder: Path,
    model: nn.Module,
    meta: CheckpointMeta,
    state: dict[str, Any] | None = None,
) -> None:
    """Write weights and metadata (and resumable state); each file is replaced atomically."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / (WEIGHTS_FILE + ".tmp")
    save_model(_unwrap(model), str(tmp))
    tmp.replace(folder / WEIGHTS_FILE)
    tmp = folder / (META_FILE + ".tmp")
    tmp.write_text(meta.model_dump_json(indent=2) + "\n")
    tmp.replace(folder / META_FILE)
    if state is not None:
        save_state(folder, state)


def save_state(folder: Path, state: dict[str, Any]) -> None:
    """state.pt, replaced atomically: a Ctrl+C while it is written leaves the previous one whole."""
    tmp = Path(folder) / (STATE_FILE + ".tmp")
    torch.save(state, tmp)
    tmp.replace(Path(folder) / STATE_FILE)


def meta_from_manifest(raw: dict[str, Any], net_config: dict[str, Any]) -> CheckpointMeta:
    """A CheckpointMeta carrying a manifest's provenance (raw: its JSON, v1 or v2)."""
    metrics, training = raw["metrics"], raw["training"]
    return CheckpointMeta(
        arch=raw["arch"],
        model=net_config,
        vocab=raw["vocab"],
        format=raw["format"],
        boundary_token=raw["boundary_token"],
        data=SplitInfo(**raw["data"]),
        train_config=training["config"],
        step=training["steps"],
        train_loss=metrics["train_loss"],
        val_loss=metrics["val_loss"],
        test_loss=metrics["test_loss"],
        test_loss_unseen=metrics.get("test_loss_unseen"),
        wall_seconds=training["wall_seconds"],
        device=training["device"],
        torch_version=training["torch_version"],
    )


def _model_folder_meta(folder: Path) -> CheckpointMeta:
    """A v2 model folder's manifest as checkpoint metadata (its files checked against the manifest)."""
    from contract import Manifest, ManifestError

    try:
        manifest = Manifest.load(folder)
        manifest.verify_files(folder)
    except ManifestError as exc:
        raise CheckpointError(str(exc)) from None
    if manifest.weights.path != WEIGHTS_FILE:
        raise CheckpointError(f"{folder}: weights file {manifest.weights.path!r}, expected {WEIGHTS_FILE}")
    return meta_from_manifest(json.loads((folder / MANIFEST_FILE).read_text()), manifest.net_config)


def is_model_folder(folder: Path) -> bool:
    return not (Path(folder) / META_FILE).is_file() and (Path(folder) / MANIFEST_FILE).is_file()


def load_meta(folder: Path) -> CheckpointMeta:
    path = Path(folder) / META_FILE
    if is_model_folder(folder):
        return _model_folder_meta(Path(folder))
    if not path.is_file():
        if not Path(folder).is_dir():
            raise CheckpointError(f"{folder}: no such checkpoint or model folder")
        raise CheckpointError(f"{folder}: not a checkpoint (no {META_FILE}) nor a model folder (no {MANIFEST_FILE})")
    try:
        return CheckpointMeta.model_validate_json(path.read_bytes())
    except ValidationError as exc:
        first = exc.errors()[0]
        raise CheckpointError(f"{path}: {'.'.join(map(str, first['loc']))}: {first['msg']}") from None


def load_checkpoint(folder: Path, device: str = "cpu") -> tuple[nn.Module, CheckpointMeta]:
    """Rebuild the net from checkpoint.json and load its weights; the model is returned in eval mode."""
    meta = load_meta(folder)
    try:
        model = build(meta.arch, meta.model)
    except ValueError as exc:  # e.g. a checkpoint.json whose arch and model config do not belong together
        raise CheckpointError(f"{Path(folder) / META_FILE}: {exc}") from None
    weights = Path(folder) / WEIGHTS_FILE
    if not weights.is_file():
        raise CheckpointError(f"{folder}: no {WEIGHTS_FILE}")
    try:
        load_model(model, str(weights), strict=True, device=device)
    except (RuntimeError, KeyError) as exc:
        # torch's report is a header line ("Error(s) in loading state_dict for X:") then the details.
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        msg = " ".join(lines[1:2] or lines[:1])
        msg = msg if len(msg) <= 160 else msg[:157] + "..."
        raise CheckpointError(f"{weights}: weights do not fit a {meta.arch} with this config ({msg})") from None
    return model.to(device).eval(), meta


def load_state(folder: Path) -> dict[str, Any] | None:
    path = Path(folder) / STATE_FILE
    return torch.load(path, map_location="cpu", weights_only=True) if path.is_file() else None


def _unwrap(model: nn.Module) -> nn.Module:
    """The plain module under DDP / torch.compile wrappers."""
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)
