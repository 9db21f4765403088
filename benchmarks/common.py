"""What every benchmark shares: the machine description, paths, timing and model loading helpers."""

from __future__ import annotations

import os
import platform
import statistics
import time
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
        "transformers": _version("transformers"),
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
    from contract.repository import scan_repository

    if not Path(models_dir).is_dir():
        raise BenchError(f"models directory {models_dir} does not exist: run `make models` first")
    repo = scan_repository(Path(models_dir))
    if name not in repo.models:
        why = repo.failed.get(name)
        if why:
            raise BenchError(f"model {name!r} in {models_dir} failed validation: {why}")
        raise BenchError(f"model {name!r} is not in {models_dir}: run `make models` first")
    return repo.models[name]


def utc_stamp() -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
