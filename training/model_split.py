"""A model folder's data split, rebuilt from its manifest's data record: what `verify` scores through
model.onnx and `verify --via` scores through a server (both import it from here, neither from the other)."""

from __future__ import annotations

from pathlib import Path

from contract import Manifest
from training.data import Vocab, load_corpus, split_corpus
from training.datasets import BUILTIN


def split_samples(model_dir: Path, split: str = "test", data_path: str | None = None) -> tuple[Manifest, list]:
    """The model's manifest and `split` (token-id arrays), rebuilt from the manifest's data record."""
    manifest = Manifest.load(model_dir)
    dataset = manifest.data.name if data_path is None and manifest.data.name in BUILTIN else None
    corpus = load_corpus(dataset, data_path, manifest.format)
    if corpus.sha256 != manifest.data.sha256:
        raise ValueError(f"the data file is not the one {manifest.name} was trained on (sha256 differs)")
    # The manifest's own vocabulary, not one rebuilt from the data: a model fine-tuned from a shipped one
    # keeps the shipped vocabulary, which may have characters its new data lacks (the split is the same).
    vocab = Vocab(chars=tuple(manifest.vocab), boundary=manifest.boundary_token)
    return manifest, split_corpus(corpus, vocab, manifest.data.split_seed).get(split)
