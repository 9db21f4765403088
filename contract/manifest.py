"""`manifest.json`: what a model folder under models/ holds and how to check it.

The exporter writes it, the service validates it at start-up; nobody else defines these fields.
Schema 2 (graph contract v2, contract/graph.py) adds the trained weights (`weights`: model.safetensors)
and the net's config (`net_config`), so a shipped model can be re-exported, sampled or fine-tuned
without its run directory. A schema-1 folder is refused with the command that upgrades it.
An optional `onnx_int8` (a dynamically quantized copy of the ONNX graph with its own test loss) needs no
new schema version: manifests without it stay valid and mean "float32 only". Likewise an optional
`onnx_decode` (GPT: the graph for one new token per row over a cache it updates in place, contract/graph.py,
which the engine runs for decode steps): without it the step graph serves decode too.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from contract.families import Arch, family

SCHEMA_VERSION = 2
MANIFEST_FILE = "manifest.json"
WEIGHTS_FILE = "model.safetensors"
INT8_FILE = "model.int8.onnx"
DECODE_FILE = "model.decode.onnx"
UPGRADE_HINT = "python -m training upgrade {folder}"

Format = Literal["onnx", "torchscript"]
Precision = Literal["float32", "int8"]


class ManifestError(ValueError):
    """A model folder that cannot be served, with a one-line reason."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FileEntry(_Strict):
    path: str = Field(description="file name relative to the model folder")
    bytes: int = Field(ge=1)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class Metrics(_Strict):
    """Mean negative log-likelihood in nats per character on each split."""

    train_loss: float
    val_loss: float
    test_loss: float
    test_loss_unseen: float | None = Field(
        None, description="test loss over test samples that do not occur in the train split (lines data)"
    )


class QuantizedGraph(_Strict):
    """The ONNX graph with its MatMul weights quantized to int8 (onnxruntime's quantize_dynamic; activations
    quantized per call), same I/O contract. Written only when its test loss rose by at most 0.01 over the
    float graph's, both measured here with ONNX Runtime; served only when asked (`--precision int8`)."""

    file: FileEntry
    test_loss: float = Field(description="test loss through this graph with ONNX Runtime (nats per character)")
    float_test_loss: float = Field(description="the float ONNX graph's, measured the same way at the same time")


class DataInfo(_Strict):
    name: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    split_seed: int
    split_fractions: tuple[float, float, float]


class TrainingInfo(_Strict):
    config: dict[str, Any]
    steps: int = Field(ge=0)
    wall_seconds: float = Field(ge=0)
    device: str
    torch_version: str


class Manifest(_Strict):
    schema_version: Literal[2] = SCHEMA_VERSION
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$")
    arch: Arch
    n_params: int = Field(ge=1)
    vocab: list[str] = Field(min_length=2, description="index = token id")
    format: Literal["lines", "stream"]
    boundary_token: int | None
    block_size: int = Field(ge=1)
    n_layer: int | None = None
    n_head: int | None = None
    head_dim: int | None = None
    files: dict[Format, FileEntry] = Field(min_length=1)
    weights: FileEntry = Field(description="the trained weights (safetensors), for re-export and fine-tuning")
    net_config: dict[str, Any] = Field(description="the net's config, as training.nets.build takes it")
    data_hashes: FileEntry | None = Field(None, description="lines models: hashes of every data sample (novelty)")
    metrics: Metrics
    onnx_int8: QuantizedGraph | None = Field(None, description="an int8 ONNX graph beside the float one")
    onnx_decode: FileEntry | None = Field(
        None, description="GPT: the ONNX decode graph (one new token per row, cache updated in place)"
    )
    data: DataInfo
    training: TrainingInfo
    created_at: datetime

    @model_validator(mode="after")
    def _consistent(self) -> Manifest:
        if any(len(ch) != 1 for ch in self.vocab) or len(set(self.vocab)) != len(self.vocab):
            raise ValueError("vocab must be distinct single characters")
        if (self.format == "lines") != (self.boundary_token is not None):
            raise ValueError("boundary_token is required for 'lines' models and must be null for 'stream'")
        if self.boundary_token is not None and not 0 <= self.boundary_token < len(self.vocab):
            raise ValueError("boundary_token is not a vocab index")
        gpt_fields = (self.n_layer, self.n_head, self.head_dim)
        kv_cache = family(self.arch).kv_cache
        if kv_cache and any(v is None or v < 1 for v in gpt_fields):
            raise ValueError(f"{self.arch} models need n_layer, n_head and head_dim")
        if not kv_cache and any(v is not None for v in gpt_fields):
            raise ValueError("n_layer, n_head and head_dim are for models with a KV cache only")
        return self

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    @classmethod
    def load(cls, folder: Path) -> Manifest:
        """Parse and validate folder/manifest.json; raise ManifestError naming the problem."""
        path = Path(folder) / MANIFEST_FILE
        if not path.is_file():
            raise ManifestError(f"{path}: no {MANIFEST_FILE}")
        raw = path.read_bytes()
        version = _schema_version(raw)
        if version is not None and version < SCHEMA_VERSION:
            raise ManifestError(
                f"{path}: schema_version {version} (graph contract v{version}) is no longer served; "
                f"upgrade it without retraining: {UPGRADE_HINT.format(folder=folder)}"
            )
        try:
            return cls.model_validate_json(raw)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "manifest"
            raise ManifestError(f"{path}: {where}: {first['msg']}") from None

    def verify_files(self, folder: Path) -> None:
        """Check every listed file's size and sha256; raise ManifestError on the first mismatch."""
        int8 = [("onnx int8", self.onnx_int8.file)] if self.onnx_int8 is not None else []
        decode = [("onnx decode", self.onnx_decode)] if self.onnx_decode is not None else []
        for fmt, entry in [*self.files.items(), ("weights", self.weights), *int8, *decode]:
            path = Path(folder) / entry.path
            if not path.is_file():
                raise ManifestError(f"{path}: {fmt} file is missing")
            if path.stat().st_size != entry.bytes:
                raise ManifestError(f"{path}: size {path.stat().st_size} != manifest's {entry.bytes}")
            if sha256_of(path) != entry.sha256:
                raise ManifestError(f"{path}: sha256 does not match the manifest")

    def save(self, folder: Path) -> Path:
        path = Path(folder) / MANIFEST_FILE
        path.write_text(self.model_dump_json(indent=2) + "\n")
        return path


def _schema_version(raw: bytes) -> int | None:
    """The declared schema_version of a manifest's JSON, when it has an integer one."""
    try:
        version = json.loads(raw).get("schema_version")
    except (ValueError, AttributeError):
        return None
    return version if isinstance(version, int) else None


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
