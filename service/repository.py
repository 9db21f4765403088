"""The models/ folder as the service sees it: which models can be served, and why the others cannot."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from contract import MANIFEST_FILE, Manifest, ManifestError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelEntry:
    name: str
    folder: Path
    manifest: Manifest


@dataclass(frozen=True)
class Repository:
    models: dict[str, ModelEntry]
    failed: dict[str, str]  # folder name -> one-line reason


def scan_repository(models_dir: Path) -> Repository:
    """Validate every subfolder (schema + size and sha256 of each listed file) and keep the good ones.

    A bad folder is logged and listed in `failed`, never raised: one broken model must not keep the
    others from being served. Only a missing models_dir raises (FileNotFoundError), since then the
    service has nothing to do. Hidden folders (".cache", ...) are skipped; models are keyed by the
    manifest's name.
    """
    models_dir = Path(models_dir)
    if not models_dir.is_dir():
        raise FileNotFoundError(f"models directory {models_dir} does not exist or is not a directory")
    models: dict[str, ModelEntry] = {}
    failed: dict[str, str] = {}
    for folder in sorted(p for p in models_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        try:
            manifest = _check(folder)
            if manifest.name in models:
                other = models[manifest.name].folder.name
                raise ManifestError(f"{folder}: model name {manifest.name!r} is already used by {other}/")
        except (ManifestError, OSError) as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            log.warning("model folder %s left out: %s", folder.name, reason)
            failed[folder.name] = reason
            continue
        models[manifest.name] = ModelEntry(manifest.name, folder, manifest)
    return Repository(models=models, failed=failed)


def _check(folder: Path) -> Manifest:
    if not (folder / MANIFEST_FILE).is_file():
        raise ManifestError(f"{folder}: no {MANIFEST_FILE}")
    manifest = Manifest.load(folder)
    root = folder.resolve()
    for fmt, entry in manifest.files.items():
        if not (folder / entry.path).resolve().is_relative_to(root):
            raise ManifestError(f"{folder}: {fmt} file {entry.path!r} lies outside the model folder")
    manifest.verify_files(folder)
    return manifest
