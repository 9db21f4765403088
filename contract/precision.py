"""Which graph file a model is served from at a precision (`serve --precision float32|int8`).

An int8 graph is optional (manifest `onnx_int8`, written by `training export --int8`); asking for int8
serves it for the models that have one and leaves the others float32. Torch-, numpy- and
onnxruntime-free, so the API server processes can say which precision each model runs at.
"""

from __future__ import annotations

from dataclasses import replace

from contract.manifest import Manifest, Precision
from contract.repository import ModelEntry, Repository


def at_precision(entry: ModelEntry, precision: Precision) -> ModelEntry:
    """The model as served at `precision`: at int8, a model whose manifest lists an int8 graph gets it as
    its ONNX file (what the engine opens for the onnx backend); one without stays as it is (float32)."""
    manifest = entry.manifest
    if precision == "float32" or manifest.onnx_int8 is None:
        return entry
    files = {**manifest.files, "onnx": manifest.onnx_int8.file}  # decode steps too: the float decode graph goes
    return replace(entry, manifest=manifest.model_copy(update={"files": files, "onnx_decode": None}))


def repository_at(repo: Repository, precision: Precision) -> Repository:
    return replace(repo, models={name: at_precision(e, precision) for name, e in repo.models.items()})


def served_precision(manifest: Manifest) -> Precision:
    """int8 when `manifest` is an at_precision(..., "int8") one whose ONNX file is its int8 graph."""
    q = manifest.onnx_int8
    return "int8" if q is not None and manifest.files.get("onnx") == q.file else "float32"


def served_test_loss(manifest: Manifest) -> float:
    """The test loss of the graph actually served (the int8 graph's own, when that is the one)."""
    q = manifest.onnx_int8
    return q.test_loss if q is not None and served_precision(manifest) == "int8" else manifest.metrics.test_loss
