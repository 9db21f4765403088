"""What an export of a `lines` model learns from its data file, when that file is at hand: the hash set
of every sample (engine.novelty: is a generated sample new?), the novelty rate of the card, and
test_loss_unseen for checkpoints evaluated before it existed.

The data is looked up locally only (--data path recorded in the config, $CHARLM_DATA_DIR, the cache),
never downloaded: an export without its data still works, its folder just carries no hash set.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from contract import FileEntry
from engine import DataHashes
from training.checkpoint import CheckpointMeta
from training.data import Corpus, Vocab, load_corpus, split_corpus
from training.datasets import BUILTIN, DataError, cache_dir
from training.export.samples import NOVELTY_SAMPLES, novelty_rate
from training.tasks import Task


@dataclass(frozen=True)
class Novelty:
    """For the card: how many of `samples` generated at temperature 1 were not in the data."""

    rate: float
    samples: int
    distinct: int  # distinct normalised samples in the data file
    bytes: int  # size of the hash file


def local_corpus(meta: CheckpointMeta) -> Corpus | None:
    """The data file the checkpoint was trained on, if it is on this machine (sha256 checked)."""
    candidates: list[tuple[str | None, Path]] = []
    if path := meta.train_config.get("data"):
        candidates.append((None, Path(path)))
    if (ds := BUILTIN.get(meta.data.name)) is not None:
        if env := os.environ.get("CHARLM_DATA_DIR"):
            candidates.append((ds.name, Path(env) / ds.filename))
        candidates.append((ds.name, cache_dir() / ds.filename))
    for dataset, path in candidates:
        if not path.is_file():
            continue
        try:
            corpus = load_corpus(dataset, path, meta.format)
        except DataError:
            continue
        if corpus.sha256 == meta.data.sha256:
            return corpus
    return None


def data_samples(corpus: Corpus) -> list[str]:
    """Every sample of a `lines` file, as split_corpus reads them (all splits)."""
    return [s for s in (ln.rstrip("\r") for ln in corpus.text.split("\n")) if s]


def unseen_test_loss(net: nn.Module, meta: CheckpointMeta, corpus: Corpus) -> float | None:
    """test_loss_unseen of the eager net, exactly as training computes it (training.tasks)."""
    vocab = Vocab(chars=tuple(meta.vocab), boundary=meta.boundary_token)  # a fine-tuned model's too
    try:
        splits = split_corpus(corpus, vocab, meta.data.split_seed)
    except DataError:
        return None
    task = Task(meta.arch, splits, net.cfg.block_size, vocab.boundary)
    return task.exact_loss(net, "test_unseen") if task.has("test_unseen") else None


def measure(
    net: nn.Module, meta: CheckpointMeta, folder: Path
) -> tuple[CheckpointMeta, Novelty | None, FileEntry | None]:
    """For a `lines` checkpoint whose data is here: write the hash file into `folder`, measure the
    novelty rate, fill a missing test_loss_unseen. Returns (meta, Novelty or None, FileEntry or None)."""
    if meta.format != "lines" or meta.boundary_token is None:
        return meta, None, None
    corpus = local_corpus(meta)
    if corpus is None:
        return meta, None, None
    if meta.test_loss_unseen is None:
        meta = meta.model_copy(update={"test_loss_unseen": unseen_test_loss(net, meta, corpus)})
    hashes = DataHashes.of_samples(data_samples(corpus))
    entry = hashes.save(folder)
    rate = novelty_rate(net, meta.arch, meta.vocab, meta.boundary_token, hashes.is_novel)
    return meta, Novelty(rate, NOVELTY_SAMPLES, len(hashes), entry.bytes), entry
