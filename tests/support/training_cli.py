"""What the training CLI tests share: the data, a tiny GPT recipe, running `python -m training` as a user does,
and the one-line error contract (exit 2, one line on stderr, no traceback)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DATA_DIR = Path(os.environ.get("CHARLM_DATA_DIR") or ROOT.parent / "shared" / "data")


def require_names() -> None:
    """Skip a test module whose runs need names.txt when it is not there."""
    if not (DATA_DIR / "names.txt").is_file():
        pytest.skip(f"names.txt not in {DATA_DIR}; set CHARLM_DATA_DIR", allow_module_level=True)


QUIET = ["--set", "samples=0", "--set", "threads=1", "--set", "eval_iters=2"]
TINY_GPT = [
    "--config", "names_gpt",
    "--set", "model.n_layer=1", "--set", "model.n_head=2", "--set", "model.n_embd=16",
    "--set", "model.dropout=0.1",  # dropout draws from the global RNG: resume must restore it
    "--set", "batch_size=8", "--set", "warmup_iters=3", "--set", "lr_decay_iters=20",
    "--set", "eval_interval=4",  # evals at 4, 8, 12, ...: the 10-step run also evaluates at 10
    "--set", "ema_decay=0.9",  # the weight average is part of the resumable state too
    *QUIET,
]  # fmt: skip


def env(**changes: str | None) -> dict[str, str]:
    e = {**os.environ, "CHARLM_DATA_DIR": str(DATA_DIR), "OMP_NUM_THREADS": "1"}
    for key, value in changes.items():
        if value is None:
            e.pop(key, None)
        else:
            e[key] = value
    return e


def charlm(*args: str, environ: dict[str, str] | None = None, timeout: float = 1800) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "training", *args],
        cwd=ROOT,
        env=environ or env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc


def one_line_error(proc: subprocess.CompletedProcess, *fragments: str) -> str:
    """Exit 2, exactly one line on stderr, no traceback; returns the line."""
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, f"exit {proc.returncode}: {proc.stderr[-3000:]}"
    assert "Traceback" not in proc.stderr
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ")
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def final_state(folder: Path) -> dict:
    import torch

    return torch.load(folder / "state.pt", map_location="cpu", weights_only=True)
