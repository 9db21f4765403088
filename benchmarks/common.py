"""What every benchmark shares: the machine description, paths, timing and model loading helpers."""

from __future__ import annotations

import os
import platform
import statistics
import time
import warnings
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
MODELS_DIR = REPO / "models"
RESULTS_DIR = REPO / "benchmarks" / "results"
DOCS_FILE = REPO / "docs" / "benchmarks.md"
SHAKESPEARE = "shakespeare-gpt"
NAMES = "names-gpt"


class BenchError(RuntimeError):
    """A benchmark that cannot run here, with a one-line reason that says what to do."""


def cores() -> int:
    """CPUs this process may run on (what the container actually gives us, not the host's count)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def machine_info() -> dict[str, Any]:
    """The JSON's "machine" block: versions from package metadata, so nothing heavy is imported."""
    return {
        "cpu": cpu_name(),
        "cores": cores(),
        "python": platform.python_version(),
        "torch": _version("torch"),
        "onnxruntime": _version("onnxruntime"),
        "litserve": _version("litserve"),
    }


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    """Wall seconds of one call (perf_counter) and its result."""
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def model_entry(models_dir: Path, name: str) -> Any:
    """The service's ModelEntry for `name` (manifest + sha256 checked), or BenchError saying what to run."""
    from service.repository import scan_repository

    if not Path(models_dir).is_dir():
        raise BenchError(f"models directory {models_dir} does not exist: run `make models` first")
    repo = scan_repository(Path(models_dir))
    if name not in repo.models:
        why = repo.failed.get(name)
        detail = f" (its folder failed validation: {why})" if why else ""
        raise BenchError(f"model {name!r} is not in {models_dir}{detail}: run `make models` first")
    return repo.models[name]


def load_eager_gpt(entry: Any) -> Any:
    """The eager `training.nets` GPT with the weights of the model's model.ts, in eval mode.

    models/ holds no torch checkpoint, but the TorchScript file is the traced export wrapper
    (training.export.graphs.StepGraph, attribute `net`) around the very same net, so its state_dict
    is the net's with a `net.` prefix. The config comes from the manifest and the weight shapes.
    """
    import torch

    from training.nets import build

    manifest = entry.manifest
    if manifest.arch != "gpt":
        raise BenchError(f"{manifest.name} is a {manifest.arch}, not a gpt")
    if "torchscript" not in manifest.files:
        raise BenchError(f"{manifest.name} has no model.ts to take the eager weights from: run `make models`")
    with warnings.catch_warnings():  # torch 2.13 deprecates torch.jit: one warning per load
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        traced = torch.jit.load(str(entry.folder / manifest.files["torchscript"].path), map_location="cpu")
    state = {k.removeprefix("net."): v for k, v in traced.state_dict().items()}
    cfg = {
        "vocab_size": manifest.vocab_size,
        "block_size": manifest.block_size,
        "n_layer": manifest.n_layer,
        "n_head": manifest.n_head,
        "n_embd": (manifest.n_head or 0) * (manifest.head_dim or 0),
        "dropout": 0.0,
        "bias": "blocks.0.attn.c_attn.bias" in state,
    }
    net = build("gpt", cfg)
    missing, unexpected = net.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise BenchError(
            f"{manifest.name}: model.ts weights do not map onto training.nets' gpt "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    net.eval()
    _check_same_function(net, traced, manifest)
    return net


def _check_same_function(net: Any, traced: Any, manifest: Any) -> None:
    """One step through both: the eager net must compute what the shipped file computes."""
    import torch

    idx = torch.arange(min(5, manifest.block_size))[None, :] % manifest.vocab_size
    with torch.no_grad():
        ours, _ = net.step(idx, torch.tensor([0]), net.empty_cache(1))
        theirs = traced(idx, torch.tensor([0]), *net.empty_cache(1))[0]
    if not torch.allclose(ours, theirs, atol=1e-4, rtol=1e-4):
        diff = (ours - theirs).abs().max().item()
        raise BenchError(f"{manifest.name}: eager net and model.ts disagree (max |diff| {diff:.2e})")


def utc_stamp() -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
