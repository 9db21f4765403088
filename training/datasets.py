"""The built-in datasets (names, tiny Shakespeare): where they are found, in order — `--data PATH`, then
$CHARLM_DATA_DIR, then the cache — and their download from the public source, checked against its sha256."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Format = Literal["lines", "stream"]


class DataError(ValueError):
    """A dataset that cannot be used, with a one-line reason."""


@dataclass(frozen=True)
class BuiltinDataset:
    name: str
    filename: str
    url: str
    sha256: str
    size: int
    format: Format


BUILTIN: dict[str, BuiltinDataset] = {
    "names": BuiltinDataset(
        "names",
        "names.txt",
        "https://raw.githubusercontent.com/karpathy/makemore/master/names.txt",
        "0a30b5557f192f32ab962680889aac5f6fda0f4cecf40a6d0b5694f58ea8cc4d",
        228_145,
        "lines",
    ),
    "shakespeare": BuiltinDataset(
        "shakespeare",
        "tinyshakespeare.txt",
        "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
        "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
        1_115_394,
        "stream",
    ),
}


def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "charlm"


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def resolve_builtin(name: str) -> Path:
    """Find a built-in dataset: $CHARLM_DATA_DIR, then the user cache, then a checked download."""
    if name not in BUILTIN:
        raise DataError(f"unknown dataset {name!r}; built-in datasets: {', '.join(BUILTIN)}")
    ds = BUILTIN[name]
    candidates = []
    if env := os.environ.get("CHARLM_DATA_DIR"):
        candidates.append(Path(env) / ds.filename)
    candidates.append(cache_dir() / ds.filename)
    for path in candidates:
        if path.is_file():
            if sha256_bytes(path.read_bytes()) != ds.sha256:
                raise DataError(f"{path}: sha256 does not match the {name} dataset; {_ways(ds)}")
            return path
    return _download(ds)


def _ways(ds: BuiltinDataset) -> str:
    return (
        f"provide {ds.filename} with --data PATH, or put it in $CHARLM_DATA_DIR or {cache_dir()}, "
        f"or let charlm download it from {ds.url} (needs internet)"
    )


def _download(ds: BuiltinDataset) -> Path:
    try:
        import pooch  # only needed when a download actually happens
    except ImportError:
        raise DataError(f"{ds.filename} is not available and pooch is not installed; {_ways(ds)}") from None

    # pooch logs "Downloading data from ..." to stderr; a failed download must stay one line there.
    pooch.get_logger().setLevel("WARNING")
    try:
        return Path(
            pooch.retrieve(
                ds.url,
                known_hash=f"sha256:{ds.sha256}",
                fname=ds.filename,
                path=cache_dir(),
                progressbar=False,
            )
        )
    except Exception as exc:  # pooch's checksum mismatch is a ValueError; the rest are network errors
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if isinstance(exc, ValueError) and not isinstance(exc, OSError):  # requests errors are OSErrors
            reason = f"the file failed its sha256 check: {reason}"
        raise DataError(f"cannot download {ds.name} ({reason}); {_ways(ds)}") from None
