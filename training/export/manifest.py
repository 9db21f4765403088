"""Fill contract.Manifest (the one schema for manifest.json) from a checkpoint and the exported files."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from pydantic import ValidationError
from torch import nn

from contract import DataInfo, FileEntry, Manifest, Metrics, TrainingInfo, family, sha256_of
from training.checkpoint import CheckpointMeta
from training.export.errors import ExportError
from training.export.preflight import LOSSES
from training.nets import n_params


def file_entry(path: Path) -> FileEntry:
    return FileEntry(path=path.name, bytes=path.stat().st_size, sha256=sha256_of(path))


def build_manifest(
    name: str,
    meta: CheckpointMeta,
    net: nn.Module,
    files: dict[str, FileEntry],
    weights: FileEntry,
    data_hashes: FileEntry | None = None,
) -> Manifest:
    """Everything the service needs to serve the folder, where the model came from, and the weights and
    net config that let it be re-exported or fine-tuned without its run directory."""
    cfg = net.cfg
    gpt = {"n_layer": cfg.n_layer, "n_head": cfg.n_head, "head_dim": cfg.head_dim} if family(meta.arch).kv_cache else {}
    try:
        return Manifest(
            name=name,
            arch=meta.arch,
            n_params=n_params(net),
            vocab=meta.vocab,
            format=meta.format,
            boundary_token=meta.boundary_token,
            block_size=cfg.block_size,
            **gpt,
            files=files,
            weights=weights,
            net_config=dict(meta.model),
            data_hashes=data_hashes,
            # test_loss_unseen: on checkpoints whose meta carries it (lines data, training v2)
            metrics=Metrics(**{k: getattr(meta, k) for k in LOSSES}, test_loss_unseen=_unseen(meta)),
            data=DataInfo(**meta.data.model_dump()),
            training=TrainingInfo(
                config=meta.train_config,
                steps=meta.step,
                wall_seconds=meta.wall_seconds,
                device=meta.device,
                torch_version=meta.torch_version,
            ),
            created_at=datetime.now(UTC),
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "manifest"
        raise ExportError(f"cannot write a valid manifest: {where}: {first['msg']}") from None


def _unseen(meta: CheckpointMeta) -> float | None:
    value = getattr(meta, "test_loss_unseen", None)
    return float(value) if value is not None else None
