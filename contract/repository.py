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


def scan_repository(models_dir: Path, log_failures: bool = True) -> Repository:
    """Validate every subfolder (schema + size and sha256 of each listed file) and keep the good ones.

    A bad folder is logged and listed in `failed`, never raised: one broken model must not keep the
    others from being served. Only a missing models_dir raises (FileNotFoundError), since then the
    service has nothing to do. Hidden folders (".cache", ...) are skipped; models are keyed by the
    manifest's name, and folders that share a name are all refused: which one the user meant is a guess.
    `log_failures=False` leaves the warnings to the caller (`serve` exits with one line if nothing is left).
    """
    models_dir = Path(models_dir)
    if not models_dir.is_dir():
        raise FileNotFoundError(f"models directory {models_dir} does not exist or is not a directory")
    found: dict[str, list[ModelEntry]] = {}
    failed: dict[str, str] = {}
    for folder in sorted(p for p in models_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        try:
            manifest = _check(folder)
        except (ManifestError, OSError) as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            failed[folder.name] = _relative(reason, folder)
            continue
        found.setdefault(manifest.name, []).append(ModelEntry(manifest.name, folder, manifest))
    models: dict[str, ModelEntry] = {}
    for name, entries in found.items():
        if len(entries) == 1:
            models[name] = entries[0]
            continue
        folders = [e.folder.name for e in entries]
        for entry in entries:
            others = ", ".join(f + "/" for f in folders if f != entry.folder.name)
            failed[entry.folder.name] = f"model name {name!r} is also used by {others} (names must be unique)"
    repo = Repository(models=models, failed=dict(sorted(failed.items())))
    if log_failures:
        log_left_out(repo)
    return repo


def log_left_out(repo: Repository) -> None:
    for folder, reason in repo.failed.items():
        log.warning("model folder %s left out: %s", folder, reason)


def describe_unservable(models_dir: Path, repo: Repository) -> str:
    """The one line `serve` exits with when nothing can be served: the folder, each sub-folder's reason."""
    if not repo.failed:
        return f"no model folders in {models_dir} (is the models volume mounted? --allow-empty starts anyway)"
    reasons = "; ".join(f"{folder}/: {why}" for folder, why in sorted(repo.failed.items()))
    return f"no servable model in {models_dir}: {reasons} (--allow-empty starts anyway)"


def _relative(reason: str, folder: Path) -> str:
    """A reason without the folder's absolute path (its name says which folder)."""
    for prefix in sorted({str(folder.resolve()), str(folder)}, key=len, reverse=True):
        reason = reason.replace(prefix + "/", "").replace(prefix + ":", folder.name + ":")
    return reason.removeprefix(folder.name + ": ")


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
