"""A corpus, the character tokenizer and deterministic splits (the built-in datasets: training/datasets.py).
Torch-free, so that the ONNX-only checks (which must reproduce the test split exactly) can import it without
torch."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from training.datasets import BUILTIN, DataError, Format, resolve_builtin, sha256_bytes

BOUNDARY = "."
FALLBACK_BOUNDARY = "\n"  # for line data that itself uses "." (a newline never occurs inside a line)
SPLIT_FRACTIONS: dict[str, tuple[float, float, float]] = {
    "lines": (0.8, 0.1, 0.1),
    "stream": (0.9, 0.05, 0.05),
}
DEFAULT_SPLIT_SEED = 42


@dataclass(frozen=True)
class Corpus:
    """The raw text of a dataset and where it came from."""

    name: str
    text: str
    sha256: str
    format: Format


def load_corpus(dataset: str | None, path: str | Path | None, fmt: Format | None) -> Corpus:
    """Load `--data PATH` (format required unless it is a built-in's file) or a built-in dataset by name."""
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise DataError(f"data file {path} does not exist")
        raw = path.read_bytes()
        builtin = BUILTIN.get(dataset or "")
        name = dataset if builtin else path.stem
        fmt = fmt or (builtin.format if builtin else None)
        if fmt is None:
            raise DataError(f"{path}: say how to read it with --format lines or --format stream")
    elif dataset is not None:
        path = resolve_builtin(dataset)
        raw = path.read_bytes()
        name, fmt = dataset, fmt or BUILTIN[dataset].format
    else:
        raise DataError("no data: give a built-in dataset name or --data PATH")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    if not text.strip():
        raise DataError(f"{path}: the data file is empty")
    return Corpus(name=name, text=text, sha256=sha256_bytes(raw), format=fmt)


@dataclass(frozen=True)
class Vocab:
    """Characters by token id. For `lines` data, id 0 is the boundary token that starts and ends samples."""

    chars: tuple[str, ...]
    boundary: int | None

    @classmethod
    def build(cls, text: str, fmt: Format) -> Vocab:
        if fmt == "lines":
            used = sorted(set(text) - {"\n", "\r"})
            mark = BOUNDARY if BOUNDARY not in used else FALLBACK_BOUNDARY
            chars, boundary = (mark, *used), 0
        else:
            chars, boundary = tuple(sorted(set(text))), None
        content = len(chars) - (1 if boundary is not None else 0)
        if content < 2:
            raise DataError(f"the data has a vocabulary of {content} character(s); a language model needs >= 2")
        return cls(chars=chars, boundary=boundary)

    @property
    def size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> list[int]:
        lookup = self._lookup
        unknown = sorted({ch for ch in text if ch not in lookup})
        if unknown or (self.boundary is not None and self.chars[self.boundary] in text):
            bad = unknown or [self.chars[self.boundary]]
            raise DataError(f"characters outside the vocabulary: {', '.join(map(repr, bad))}")
        return [lookup[ch] for ch in text]

    def decode(self, ids: list[int]) -> str:
        return "".join(self.chars[i] for i in ids)

    @property
    def _lookup(self) -> dict[str, int]:
        return {ch: i for i, ch in enumerate(self.chars)}


@dataclass(frozen=True)
class Splits:
    """Token data per split. `lines`: one array per sample (no boundaries); `stream`: one array each."""

    train: list[np.ndarray]
    val: list[np.ndarray]
    test: list[np.ndarray]
    seed: int
    fractions: tuple[float, float, float]

    def get(self, split: str) -> list[np.ndarray]:
        if split not in ("train", "val", "test"):
            raise DataError(f"unknown split {split!r}; use train, val or test")
        return getattr(self, split)


def split_corpus(corpus: Corpus, vocab: Vocab, seed: int = DEFAULT_SPLIT_SEED) -> Splits:
    """`lines`: shuffle lines with `seed`, 80/10/10. `stream`: contiguous 90/5/5."""
    fractions = SPLIT_FRACTIONS[corpus.format]
    if corpus.format == "lines":
        lines = [ln.rstrip("\r") for ln in corpus.text.split("\n")]
        lines = [ln for ln in lines if ln]
        if len(lines) < 3:
            raise DataError(f"{corpus.name}: {len(lines)} non-empty line(s); need at least 3 (train/val/test)")
        random.Random(seed).shuffle(lines)
        n1 = int(fractions[0] * len(lines))
        n2 = int((fractions[0] + fractions[1]) * len(lines))
        n1, n2 = max(1, min(n1, len(lines) - 2)), max(n1 + 1, min(n2, len(lines) - 1))
        enc = [np.array(vocab.encode(ln), dtype=np.int64) for ln in lines]
        return Splits(enc[:n1], enc[n1:n2], enc[n2:], seed, fractions)
    ids = np.array(vocab.encode(corpus.text), dtype=np.int64)
    n1, n2 = int(fractions[0] * len(ids)), int((fractions[0] + fractions[1]) * len(ids))
    return Splits([ids[:n1]], [ids[n1:n2]], [ids[n2:]], seed, fractions)


@dataclass(frozen=True)
class LineLengths:
    """The longest sample of `lines` data and where it is: what decides a GPT's block_size."""

    longest: int
    line_no: int  # 1-based, in the file
    text: str
    lengths: tuple[int, ...]

    def over(self, max_len: int) -> int:
        return sum(n > max_len for n in self.lengths)


def line_lengths(corpus: Corpus) -> LineLengths:
    """Lengths of the non-empty lines of a `lines` corpus (what split_corpus turns into samples)."""
    best, where, text, lengths = -1, 0, "", []
    for i, line in enumerate(corpus.text.split("\n"), start=1):
        line = line.rstrip("\r")
        if line:
            lengths.append(len(line))
            if len(line) > best:
                best, where, text = len(line), i, line
    return LineLengths(best, where, text, tuple(lengths))


def check_stream_length(splits: Splits, block_size: int, name: str) -> None:
    """Each `stream` split must hold a window plus its next character, or batching fails inside torch."""
    for split in ("train", "val", "test"):
        n = len(splits.get(split)[0])
        if n < block_size + 1:
            share = dict(zip(("train", "val", "test"), splits.fractions, strict=True))[split]
            raise DataError(
                f"{name}: the {split} split ({share:.0%} of the data) has {n} characters, fewer than "
                f"block_size + 1 = {block_size + 1}; use more data or a smaller model.block_size"
            )


def window_examples(samples: list[np.ndarray], block_size: int, boundary: int | None) -> tuple[np.ndarray, ...]:
    """(contexts [N, block_size], targets [N]) for next-character prediction with a fixed window.

    `lines` (boundary set): every character of every sample plus the closing boundary, the context
    left-padded with the boundary (makemore part 2). `stream`: every position with a full window.
    """
    if boundary is not None:
        xs, ys = [], []
        for s in samples:
            seq = np.concatenate([np.full(block_size, boundary), s, [boundary]]).astype(np.int64)
            idx = np.arange(len(s) + 1)[:, None] + np.arange(block_size)[None, :]
            xs.append(seq[idx])
            ys.append(seq[block_size:])
        return np.concatenate(xs), np.concatenate(ys)
    ids = samples[0]
    n = len(ids) - block_size
    if n < 1:
        raise DataError(f"the split has {len(ids)} tokens, fewer than block_size + 1 = {block_size + 1}")
    idx = np.arange(n)[:, None] + np.arange(block_size)[None, :]
    return ids[idx], ids[block_size:]


def sequence_examples(samples: list[np.ndarray], block_size: int, boundary: int) -> tuple[np.ndarray, np.ndarray]:
    """(inputs [N, block_size], targets [N, block_size]) for a GPT on `lines` data.

    Input = boundary + sample, target = sample + boundary, padded (targets with -1, ignored in the loss).
    Samples longer than block_size - 1 are cut (their tail is not learned): the trainer refuses such data
    (training.run.resolve_block_size); this cut remains for evaluating other data on a trained model.
    """
    x = np.full((len(samples), block_size), boundary, dtype=np.int64)
    y = np.full((len(samples), block_size), -1, dtype=np.int64)
    for i, s in enumerate(samples):
        s = s[: block_size - 1] if len(s) >= block_size else s
        seq = np.concatenate([[boundary], s, [boundary]])
        n = min(len(seq) - 1, block_size)
        x[i, :n] = seq[:n]
        y[i, :n] = seq[1 : n + 1]
    return x, y


def stream_chunks(ids: np.ndarray, block_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Non-overlapping (inputs, targets) windows covering a `stream` split: the exact evaluation set."""
    n = (len(ids) - 1) // block_size
    if n < 1:
        raise DataError(f"the split has {len(ids)} tokens, fewer than block_size + 1 = {block_size + 1}")
    x = ids[: n * block_size].reshape(n, block_size)
    y = ids[1 : n * block_size + 1].reshape(n, block_size)
    return x, y
