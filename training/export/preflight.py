"""Checks that need no torch, run before anything heavy so that mistakes are reported at once.

Imports only the standard library and `contract`: `python -m training export` with a wrong path
answers in a fraction of a second instead of after importing torch and the ONNX exporter.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any, get_args

from contract import MANIFEST_FILE
from contract.manifest import Arch
from training.export.errors import ExportError

META_FILE = "checkpoint.json"  # training.checkpoint.META_FILE, not imported: that module imports torch
LOSSES = ("train_loss", "val_loss", "test_loss")
FILES = {"onnx": "model.onnx", "torchscript": "model.ts"}
DEFAULT_FORMATS = ("onnx", "torchscript")
NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")  # contract.Manifest.name


def preflight(
    ckpt_dir: Path, out_dir: Path, formats: Iterable[str], force: bool, name: str | None
) -> tuple[tuple[str, ...], str]:
    """Raise ExportError for a bad request; return the chosen formats and the model name."""
    chosen = check_formats(formats)
    name = name if name is not None else out_dir.resolve().name
    if not NAME_PATTERN.match(name):
        raise ExportError(f"invalid model name {name!r}: use 1-64 of a-z 0-9 . _ - (or pass --name)")
    check_checkpoint(ckpt_dir)
    check_destination(out_dir, force)
    return chosen, name


def check_formats(formats: Iterable[str]) -> tuple[str, ...]:
    chosen = tuple(dict.fromkeys(f.strip() for f in formats if f.strip()))
    unknown = [f for f in chosen if f not in FILES]
    if unknown or not chosen:
        given = ", ".join(unknown) or "(none given)"
        raise ExportError(f"unknown format(s) {given}; known: {', '.join(FILES)}")
    return chosen


def check_checkpoint(ckpt_dir: Path) -> dict[str, Any]:
    """The raw checkpoint.json, if the folder is a checkpoint of a known, evaluated model."""
    if not ckpt_dir.is_dir():
        raise ExportError(f"{ckpt_dir}: no such checkpoint folder")
    path = ckpt_dir / META_FILE
    if not path.is_file():
        raise ExportError(f"{ckpt_dir}: not a checkpoint (no {META_FILE})")
    try:
        raw = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ExportError(f"{path}: not valid JSON ({exc})") from None
    arch = raw.get("arch") if isinstance(raw, dict) else None
    if arch not in get_args(Arch):
        raise ExportError(f"{path}: unknown architecture {arch!r} (known: {', '.join(get_args(Arch))})")
    missing = [k for k in LOSSES if raw.get(k) is None]
    if missing:  # the trainer writes the exact losses when a run ends: this one was stopped before
        raise ExportError(
            f"{ckpt_dir}: checkpoint has not been evaluated (no {', '.join(missing)}): the run stopped before "
            f"its end; finish it with `python -m training train --resume --out {ckpt_dir}` (its recorded "
            "config), then export"
        )
    return raw


def check_destination(out_dir: Path, force: bool) -> None:
    """Refuse an existing folder without --force; with it, replace only an empty or model folder."""
    if not out_dir.exists() and not out_dir.is_symlink():
        return
    if not force:
        raise ExportError(f"{out_dir}: already exists (pass --force to replace it)")
    if not out_dir.is_dir() or out_dir.is_symlink():
        raise ExportError(f"{out_dir}: exists and is not a folder; not replacing it")
    if any(out_dir.iterdir()) and not (out_dir / MANIFEST_FILE).is_file():
        raise ExportError(f"{out_dir}: not a model folder (no {MANIFEST_FILE}); not replacing it, even with --force")
