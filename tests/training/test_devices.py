"""`device = "mps"` (Apple GPUs), like `cuda`: accepted by the config and the CLI, used where torch has it,
a one-line error (exit 2) where it does not."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from training.config import load_config
from training.run import pick_device

ROOT = Path(__file__).resolve().parents[2]
DATA_DIR = Path(os.environ.get("CHARLM_DATA_DIR") or ROOT.parent / "shared" / "data")


def test_the_config_accepts_mps() -> None:
    assert load_config("names_bigram", ["device=mps"]).device == "mps"


def test_pick_device_mps() -> None:
    if torch.backends.mps.is_available():
        assert pick_device("mps") == "mps"
    else:
        with pytest.raises(RuntimeError, match="--device mps: no MPS device is available"):
            pick_device("mps")
    assert pick_device("auto") in ("cuda", "cpu")  # never MPS unless asked for


@pytest.mark.skipif(not (DATA_DIR / "names.txt").is_file(), reason="names.txt not in CHARLM_DATA_DIR")
@pytest.mark.parametrize("how", [["--device", "mps"], ["--set", "device=mps"]], ids=["flag", "config"])
def test_train_on_mps_or_one_line_error(how: list[str], tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "training", "train", "--config", "names_bigram", "--set", "max_iters=3",
         "--set", "eval_interval=3", "--set", "eval_iters=1", "--set", "samples=0", *how, "--out", str(tmp_path / "r")],
        cwd=ROOT, env={**os.environ, "CHARLM_DATA_DIR": str(DATA_DIR)}, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    if torch.backends.mps.is_available():
        assert proc.returncode == 0 and "device mps" in proc.stdout, proc.stderr[-2000:]
        return
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and lines == ["error: --device mps: no MPS device is available "
                                              "(Apple silicon with an MPS build of torch)"]  # fmt: skip
