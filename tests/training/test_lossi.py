"""The per-step training loss (the lectures' `lossi`): lossi.csv and TensorBoard's loss/step(_log10) for
every step, kept across --resume; plots/loss.png in log10 with the evals on the same axes; the exported
model card's curve.png (and a plain "not recorded" for a model without a run folder)."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from training.curves import read_lossi
from training.export.card import NO_CURVE

ROOT = Path(__file__).resolve().parents[2]
DATA_DIR = Path(os.environ.get("CHARLM_DATA_DIR") or ROOT.parent / "shared" / "data")
if not (DATA_DIR / "names.txt").is_file():
    pytest.skip(f"names.txt not in {DATA_DIR}; set CHARLM_DATA_DIR", allow_module_level=True)
BIGRAM = ["--config", "names_bigram", "--set", "eval_interval=10", "--set", "eval_iters=2", "--set", "samples=0"]


def charlm(*args: str) -> subprocess.CompletedProcess:
    environ = {**os.environ, "CHARLM_DATA_DIR": str(DATA_DIR), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "training", *args], cwd=ROOT, env=environ, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """20 steps, then --resume to 30: one curve of 30 steps."""
    out = tmp_path_factory.mktemp("lossi") / "bigram"
    charlm("train", *BIGRAM, "--set", "max_iters=20", "--out", str(out))
    charlm("train", *BIGRAM, "--set", "max_iters=30", "--resume", "--out", str(out))
    return out


def test_every_step_is_recorded_once_across_resume(run: Path) -> None:
    steps, losses = read_lossi(run)
    assert steps == list(range(1, 31))
    assert losses[0] == pytest.approx(math.log(27), abs=1e-4)  # the zero-initialised table: exactly ln(27)
    assert all(math.isfinite(v) and v > 0 for v in losses) and losses[-1] < losses[0] - 0.1


def test_tensorboard_has_the_step_loss_in_log10(run: Path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    steps, losses = read_lossi(run)
    scalars: dict[int, float] = {}
    for events in sorted(run.glob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events))
        acc.Reload()
        if "loss/step_log10" in acc.Tags()["scalars"]:
            scalars.update({e.step: e.value for e in acc.Scalars("loss/step_log10")})
            assert "loss/step" in acc.Tags()["scalars"]
    assert sorted(scalars) == steps
    assert all(scalars[s] == pytest.approx(math.log10(v), abs=1e-5) for s, v in zip(steps, losses, strict=True))


def test_loss_plot_and_model_card_curve(run: Path, tmp_path: Path) -> None:
    assert (run / "plots" / "loss.png").stat().st_size > 5000
    out = tmp_path / "bigram-model"
    charlm("export", str(run), "--out", str(out), "--formats", "onnx")
    curve = out / "curve.png"
    assert curve.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and 3_000 < curve.stat().st_size < 80_000
    card = (out / "README.md").read_text()
    assert "![training loss per step, log10](curve.png)" in card and NO_CURVE not in card
    again = tmp_path / "copy"  # a re-export from the model folder keeps its curve
    charlm("export", "--from-model", str(out), "--out", str(again), "--formats", "onnx")
    assert (again / "curve.png").read_bytes() == curve.read_bytes()


def test_shipped_cards_say_the_curve_was_not_recorded() -> None:
    for card in sorted((ROOT / "models").glob("*/README.md")):
        text = card.read_text()
        assert "## Training curve" in text and NO_CURVE in text, card
        assert not (card.parent / "curve.png").exists()  # nothing drawn that the run did not record
