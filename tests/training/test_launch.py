"""`python -m training launch --nproc 2 train ...` (torchrun through its API): Ctrl+C (SIGINT to the whole
foreground process group, as a terminal sends it) or SIGTERM to the launcher gives the user's shell exit
130, the state saved, and no traceback (plain torchrun gave 1 and its own traceback)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from training.launch import exit_code

ROOT = Path(__file__).resolve().parents[2]
DATA_DIR = Path(os.environ.get("CHARLM_DATA_DIR") or ROOT.parent / "shared" / "data")
QUIET = ["--set", "samples=0", "--set", "threads=1", "--set", "eval_iters=2"]


def test_exit_code_of_the_ranks() -> None:
    assert exit_code([130, 130]) == 130
    assert exit_code([130, -15]) == 130  # one rank stopped by the launcher's SIGTERM
    assert exit_code([2, 2]) == 2  # a mistake rank 0 reported in one line
    assert exit_code([-15, 2]) == 2  # the same, the slower rank stopped by the launcher first
    assert exit_code([1, 130]) == 1
    assert exit_code([-9, -9]) == 1


@pytest.mark.skipif(not (DATA_DIR / "names.txt").is_file(), reason="names.txt not in CHARLM_DATA_DIR")
@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_interrupted_launch_exits_130_without_traceback(how: str, tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "training", "launch", "--nproc", "2", "train", "--config", "names_mlp",
            "--set", "max_iters=1000000", "--set", "eval_interval=10", "--set", "model.n_hidden=16",
            *QUIET, "--out", str(out),
        ],
        cwd=ROOT, env={**os.environ, "CHARLM_DATA_DIR": str(DATA_DIR), "OMP_NUM_THREADS": "1"},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.time() + 300
        while not (out / "state.pt").is_file():  # the first eval's save is done
            assert proc.poll() is None and time.time() < deadline, "the run did not reach its first eval"
            time.sleep(0.2)
        if how == "ctrl-c":
            os.killpg(proc.pid, signal.SIGINT)  # the terminal signals the launcher and the ranks at once
        else:
            os.kill(proc.pid, signal.SIGTERM)  # e.g. a job scheduler stopping the launcher
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, (proc.returncode, stderr[-3000:])
    assert "Traceback" not in stderr and "Error" not in stderr, stderr[-3000:]
    assert "interrupted at step" in stdout and "continue with --resume" in stdout
    assert (out / "state.pt").is_file()


@pytest.mark.skipif(not (DATA_DIR / "names.txt").is_file(), reason="names.txt not in CHARLM_DATA_DIR")
def test_a_config_mistake_is_one_line_and_exit_2(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "training", "launch", "--nproc", "2", "train", "--config", "nonexistent",
         "--out", str(tmp_path / "o")],
        cwd=ROOT, env={**os.environ, "CHARLM_DATA_DIR": str(DATA_DIR)}, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines() == [
        f"error: config nonexistent does not exist (shipped configs are in {ROOT / 'training' / 'configs'})"
    ]


def test_usage_errors_are_one_line(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "training", "launch", "--nproc", "0", "train"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2 and proc.stderr.strip().startswith("error: need --nproc")
    assert len(proc.stderr.strip().splitlines()) == 1
