"""Is a generated `lines` sample new? A model folder's `data_hashes` file answers without the data.

The file (manifest field `data_hashes`) holds one 8-byte truncated blake2b per distinct sample of the
whole data file the model was trained from (every split: "new" means not anywhere in that file), as
big-endian uint64, sorted; names.txt's 29,494 distinct names take 236 KB. A sample is normalised before
hashing (Unicode NFC, surrounding whitespace stripped, case-folded), so "Emma" is a copy of "emma".
With 8 bytes, a false "not new" needs a 64-bit collision: about n / 2**64 per sample. Torch-free.
"""

from __future__ import annotations

import hashlib
import unicodedata
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from contract import FileEntry, Manifest, ManifestError, sha256_of

DATA_HASHES_FILE = "data_hashes.bin"
HASH_BYTES = 8
_DTYPE = np.dtype(">u8")


def normalise(text: str) -> str:
    return unicodedata.normalize("NFC", text).strip().casefold()


def sample_hash(text: str) -> int:
    digest = hashlib.blake2b(normalise(text).encode("utf-8"), digest_size=HASH_BYTES).digest()
    return int.from_bytes(digest, "big")


class DataHashes:
    """The sorted hash set of a model's data: `is_novel(text)` is one binary search."""

    def __init__(self, hashes: np.ndarray):
        self.hashes = np.unique(np.asarray(hashes, dtype=np.uint64))

    @classmethod
    def of_samples(cls, samples: Iterable[str]) -> DataHashes:
        return cls(np.fromiter((sample_hash(s) for s in samples), dtype=np.uint64))

    @classmethod
    def load(cls, folder: Path | str, manifest: Manifest | None = None) -> DataHashes | None:
        """The folder's hash set, None when its manifest lists none (stream models, older exports);
        ManifestError when the listed file is missing or is not the one the manifest describes."""
        folder = Path(folder)
        manifest = manifest or Manifest.load(folder)
        entry = manifest.data_hashes
        if entry is None:
            return None
        path = folder / entry.path
        if not path.is_file():
            raise ManifestError(f"{path}: data_hashes file is missing")
        if path.stat().st_size != entry.bytes or sha256_of(path) != entry.sha256:
            raise ManifestError(f"{path}: size or sha256 does not match the manifest")
        return cls(np.frombuffer(path.read_bytes(), dtype=_DTYPE))

    def save(self, folder: Path | str) -> FileEntry:
        """Write DATA_HASHES_FILE into `folder`; the entry for the manifest's `data_hashes`."""
        path = Path(folder) / DATA_HASHES_FILE
        path.write_bytes(self.hashes.astype(_DTYPE).tobytes())
        return FileEntry(path=path.name, bytes=path.stat().st_size, sha256=sha256_of(path))

    def __len__(self) -> int:
        return len(self.hashes)

    def __contains__(self, text: str) -> bool:
        h = np.uint64(sample_hash(text))
        i = int(np.searchsorted(self.hashes, h))
        return i < len(self.hashes) and self.hashes[i] == h

    def is_novel(self, text: str) -> bool:
        """True when `text` (normalised) is no sample of the data the model was trained from."""
        return text not in self
