"""Novelty: the hash set of a `lines` model's data (engine.novelty, torch-free) and the export
that writes it, fills test_loss_unseen and reports the novelty rate in the card."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from contract import Manifest, ManifestError
from engine.novelty import DATA_HASHES_FILE, DataHashes, normalise, sample_hash

NAMES = ["emma", "olivia", "ava", "isabella", "sophia", "mia", "emma", "liam", "noah", "ava"]


def test_hash_set_round_trip(tmp_path: Path) -> None:
    hashes = DataHashes.of_samples(NAMES)
    assert len(hashes) == 8  # duplicates once
    entry = hashes.save(tmp_path)
    assert entry.path == DATA_HASHES_FILE and entry.bytes == 8 * 8
    raw = np.frombuffer((tmp_path / DATA_HASHES_FILE).read_bytes(), dtype=">u8")
    assert list(raw) == sorted(raw) and int(raw[0]) == min(sample_hash(n) for n in NAMES)
    loaded = DataHashes(raw)
    assert all(not loaded.is_novel(n) for n in NAMES)
    assert loaded.is_novel("emmaline") and loaded.is_novel("") and loaded.is_novel("em")


def test_normalisation() -> None:
    assert normalise("  Emma\n") == "emma"
    assert normalise("Zoe\u0308") == normalise("Zoë")  # NFC: a combining diaeresis is the same name
    hashes = DataHashes.of_samples(["Zoë"])
    assert not hashes.is_novel("zoe\u0308") and not hashes.is_novel(" ZOË ") and hashes.is_novel("zoe")


def test_load_from_a_model_folder_without_torch(tmp_path: Path) -> None:
    """The service side reads the file through the manifest; torch is never imported."""
    repo = Path(__file__).resolve().parents[2]
    script = (
        "import sys\n"
        "from engine.novelty import DataHashes\n"
        f"h = DataHashes.load({str(repo / 'models' / 'names-gpt')!r})\n"
        "print(len(h), h.is_novel('emma'), h.is_novel('qxzvk'), 'torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.split() == ["29494", "False", "True", "False"]
    assert DataHashes.load(repo / "models" / "shakespeare-gpt") is None  # stream models carry none


def _names_file(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    letters = list("abcdefghij")
    lines = {"".join(rng.choice(letters, size=rng.integers(3, 7))) for _ in range(300)}
    path = tmp_path / "mini.txt"
    path.write_text("\n".join(sorted(lines)) + "\nabc\nabc\n")  # a duplicate across the file
    return path


def test_export_writes_hashes_unseen_loss_and_novelty(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    from training.checkpoint import CheckpointMeta, SplitInfo, save_checkpoint
    from training.data import Vocab, load_corpus
    from training.export import export_checkpoint
    from training.nets import build

    torch.set_num_threads(1)
    data = _names_file(tmp_path)
    corpus = load_corpus(None, data, "lines")
    vocab = Vocab.build(corpus.text, "lines")
    config = {"vocab_size": vocab.size, "block_size": 4, "n_embd": 4, "n_hidden": 16}
    torch.manual_seed(0)
    net = build("wavenet", config)
    meta = CheckpointMeta(
        arch="wavenet", model=config, vocab=list(vocab.chars), format="lines", boundary_token=0,
        data=SplitInfo(name="mini", sha256=corpus.sha256, split_seed=42, split_fractions=(0.8, 0.1, 0.1)),
        train_config={"name": "mini", "arch": "wavenet", "data": str(data), "format": "lines"},
        step=1, train_loss=2.0, val_loss=2.0, test_loss=2.0,
    )  # fmt: skip
    save_checkpoint(tmp_path / "ckpt", net, meta)
    manifest = export_checkpoint(tmp_path / "ckpt", tmp_path / "mini")
    folder = tmp_path / "mini"
    assert manifest.metrics.test_loss_unseen is not None  # filled: the data was at hand
    hashes = DataHashes.load(folder)
    assert len(hashes) == len(set(corpus.text.split()))
    card = (folder / "README.md").read_text()
    assert "## Novelty" in card and "of 2,000 samples" in card and DATA_HASHES_FILE in card
    assert f"{manifest.metrics.test_loss_unseen:.4f}" in card
    # a file that is not the one the manifest lists is refused
    (folder / DATA_HASHES_FILE).write_bytes(b"\0" * manifest.data_hashes.bytes)
    with pytest.raises(ManifestError, match="sha256"):
        DataHashes.load(folder)
    # the manifest field is optional: a schema-2 manifest without it (older exports) still loads
    raw = json.loads((folder / "manifest.json").read_text())
    del raw["data_hashes"]
    assert Manifest.model_validate(raw).data_hashes is None
