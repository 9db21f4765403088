"""The lecture exercises that are not training runs: the counting bigram (`python -m training counts`) and
the backprop ninja (`python -m training ninja`): every hand-written gradient against autograd."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from training.course.ninja import (
    Shape,
    backward_atoms,
    check,
    compare,
    forward,
    init_params,
    names_windows,
    train_by_hand,
)

ROOT = Path(__file__).resolve().parents[2]
DATA_DIR = Path(os.environ.get("CHARLM_DATA_DIR") or ROOT.parent / "shared" / "data")
if not (DATA_DIR / "names.txt").is_file():
    pytest.skip(f"names.txt not in {DATA_DIR}; set CHARLM_DATA_DIR", allow_module_level=True)


def charlm(*args: str) -> subprocess.CompletedProcess:
    environ = {**os.environ, "CHARLM_DATA_DIR": str(DATA_DIR), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "training", *args], cwd=ROOT, env=environ, capture_output=True, text=True, timeout=600
    )


@pytest.fixture(scope="module")
def windows():
    return names_windows(3)


def test_every_hand_written_gradient_matches_autograd(windows) -> None:
    vocab, data = windows
    rows = check(vocab, *data["train"], Shape(), seed=2147483647)
    assert len(rows) == 28 and {r[0] for r in rows} >= {"C", "W1", "b1", "bngain", "bnbias", "W2", "b2", "emb"}
    for name, _exact, approx, diff in rows:
        assert approx and diff < 1e-6, (name, diff)


def test_a_wrong_gradient_is_caught(windows) -> None:
    """The comparison can fail: BatchNorm's variance without Bessel's correction is off by n/(n-1)."""
    vocab, data = windows
    gen = torch.Generator().manual_seed(1)
    p = init_params(vocab, Shape(), gen)
    xb, yb = data["train"][0][:32], data["train"][1][:32]
    t = forward(p, xb, yb)
    t["loss"].backward()
    with torch.no_grad():
        d = backward_atoms(p, t, xb, yb)
    assert compare(d["W1"], p["W1"].grad)[1]
    assert not compare(d["W1"] * 32 / 31, p["W1"].grad)[1]


def test_training_on_hand_written_gradients_learns(windows) -> None:
    vocab, data = windows
    losses = train_by_hand(vocab, data, Shape(), steps=300, seed=3, log=lambda *_: None)
    assert losses["train"] < 2.8 and losses["val"] < 2.8  # from ln(27) = 3.30


def test_ninja_command_prints_a_row_per_tensor() -> None:
    proc = charlm("ninja")
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = re.findall(r"^(\S+(?: \(fast\))?)\s+\| exact: (True|False)\s*\| approximate: True\s*\| maxdiff: (\S+)$",
                      proc.stdout, flags=re.M)  # fmt: skip
    assert len(rows) == 28 and all(float(r[2]) < 1e-6 for r in rows)
    assert "all 28 gradients match autograd" in proc.stdout
    bad = charlm("ninja", "--batch", "1")
    assert bad.returncode == 2 and bad.stderr.strip().startswith("error: need --hidden")


def test_counts_bigram_is_a_checkpoint(tmp_path: Path) -> None:
    from training.data import Vocab, load_corpus, split_corpus
    from training.export.reproduce import train_command
    from training.nets.bigram import counts_nll

    out = tmp_path / "counts"
    proc = charlm("counts", "--out", str(out), "-n", "3")
    assert proc.returncode == 0, proc.stderr[-2000:]
    train = float(re.search(r"train (\d\.\d{4})", proc.stdout).group(1))
    corpus = load_corpus("names", None, "lines")
    vocab = Vocab.build(corpus.text, "lines")
    seqs = [[0, *s.tolist(), 0] for s in split_corpus(corpus, vocab).train]
    assert train == pytest.approx(counts_nll(seqs, vocab.size), abs=1e-4)  # the closed form, over the same pairs
    assert (out / "counts.png").stat().st_size > 10_000
    test = float(re.search(r"test (\d\.\d{4})", proc.stdout).group(1))
    recorded = json.loads((out / "checkpoint.json").read_text())["train_config"]
    assert train_command(recorded)[0] == "python -m training counts --smoothing 1 --config names_bigram"  # the card's
    evaluated = charlm("eval", str(out))
    assert evaluated.returncode == 0 and float(evaluated.stdout) == pytest.approx(test, abs=1e-4)
