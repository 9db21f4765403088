"""The sharp edges of issue 21, each as a user meets it: a re-exported copy's name, an interrupted run's
export message and `--resume` from the run folder alone, the model card's Reproduce command, a schedule
that never leaves its warmup (and a fine-tune inheriting one), the busy-machine warning."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from contract import Manifest
from training.config import load_config
from training.export.cli import main_export
from training.export.reproduce import train_command
from training.finetune import init_config
from training.run import busy_warning
from training.step import lr_at, schedule_warning

ROOT = Path(__file__).resolve().parents[2]
DATA_DIR = Path(os.environ.get("CHARLM_DATA_DIR") or ROOT.parent / "shared" / "data")
needs_names = pytest.mark.skipif(not (DATA_DIR / "names.txt").is_file(), reason="names.txt not in CHARLM_DATA_DIR")


def charlm(*args: str) -> subprocess.CompletedProcess:
    environ = {**os.environ, "CHARLM_DATA_DIR": str(DATA_DIR), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "training", *args], cwd=ROOT, env=environ, capture_output=True, text=True, timeout=600
    )


@needs_names
def test_from_model_copy_is_named_after_its_folder(tmp_path: Path) -> None:
    """`--help` says the name defaults to the --out folder's; the copy kept the source's before, so a server
    given both folders refused both ("name used twice")."""
    out = tmp_path / "wn-copy"
    assert main_export(["--from-model", str(ROOT / "models" / "names-wavenet"), "--out", str(out)]) == 0
    assert Manifest.load(out).name == "wn-copy"
    assert (out / "README.md").read_text().startswith("# wn-copy\n")


def test_unevaluated_checkpoint_says_resume(tmp_path: Path, capsys) -> None:
    ckpt = tmp_path / "run"
    ckpt.mkdir()
    (ckpt / "checkpoint.json").write_text(json.dumps({"arch": "gpt", "train_loss": 2.5, "val_loss": 2.6}))
    assert main_export([str(ckpt), "--out", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "has not been evaluated (no test_loss)" in err
    assert f"python -m training train --resume --out {ckpt}" in err


@needs_names
def test_resume_from_the_run_folder_alone_and_the_warmup_warning(tmp_path: Path) -> None:
    """The command the export message names works: `train --resume --out RUN` reads the run's config.json.
    A run whose max_iters does not pass warmup_iters says so (it would end at the peak LR)."""
    out = tmp_path / "run"
    first = charlm(
        "train", "--config", "names_bigram", "--set", "max_iters=4", "--set", "eval_interval=2",
        "--set", "eval_iters=1", "--set", "samples=0", "--set", "warmup_iters=20", "--out", str(out),
    )  # fmt: skip
    assert first.returncode == 0, first.stderr[-2000:]
    assert "WARNING: max_iters 4 <= warmup_iters 20" in first.stdout and "--set warmup_iters=1" in first.stdout
    again = charlm("train", "--resume", "--out", str(out), "--set", "max_iters=6")
    assert again.returncode == 0, again.stderr[-2000:]
    assert json.loads((out / "checkpoint.json").read_text())["step"] == 6
    assert json.loads((out / "config.json").read_text())["name"] == "names_bigram"
    missing = charlm("train", "--resume", "--out", str(tmp_path / "nothing"))
    assert missing.returncode == 2 and "no config.json to resume from" in missing.stderr


def test_warmup_warning_and_schedule() -> None:
    cfg = load_config("names_gpt", ["max_iters=300"])
    assert lr_at(299, cfg) == pytest.approx(cfg.learning_rate * 300 / 301)  # ends at the peak
    assert "max_iters 300 <= warmup_iters 300" in schedule_warning(cfg)
    assert schedule_warning(load_config("names_gpt", ["max_iters=3000"])) is None


def test_fine_tune_scales_an_inherited_warmup() -> None:
    """names-gpt's recipe warms up for 300 steps: a 300-step fine-tune inheriting it ended at peak LR."""
    model = str(ROOT / "models" / "names-gpt")
    cfg = init_config(model, None, ["max_iters=300"], None, None)
    assert cfg.warmup_iters == 30 and schedule_warning(cfg) is None
    assert lr_at(299, cfg) < 0.2 * cfg.learning_rate
    kept = init_config(model, None, ["max_iters=300", "warmup_iters=300"], None, None)
    assert kept.warmup_iters == 300  # a --set warmup is the user's choice (and warned about)


def test_reproduce_a_fine_tune_from_its_recorded_config(tmp_path: Path) -> None:
    """No config file named after the run (names-gpt-finetune.toml does not exist), every --set kept (the
    recorded config is the TOML), and the data file by name, not the trainer's absolute path."""
    recorded = load_config("names_gpt", ["max_iters=300", "learning_rate=3e-4", "model.dropout=0.1"]).model_dump()
    recorded.update(name="names-gpt-finetune", init_from="models/names-gpt", data="/home/someone/words.txt",
                    dataset=None, format="lines", warmup_iters=30)  # fmt: skip
    command, toml = train_command(recorded)
    args = shlex.split(command)
    assert args[:4] == ["python", "-m", "training", "train"] and "/home/someone" not in command
    assert args[args.index("--config") + 1] == "config.toml" and toml is not None
    assert args[args.index("--init-from") + 1] == "models/names-gpt"
    assert args[args.index("--data") + 1] == "words.txt"
    saved = tmp_path / "config.toml"
    saved.write_text(toml)
    again = load_config(saved, data="/elsewhere/words.txt").model_dump()
    assert {k: v for k, v in again.items() if k not in ("data", "init_from")} == {
        k: v for k, v in recorded.items() if k not in ("data", "init_from")
    }


def test_reproduce_a_shipped_config_keeps_every_set() -> None:
    recorded = load_config("names_mlp", ["max_iters=300", "model.n_hidden=64", "threads=2"]).model_dump()
    command, toml = train_command(recorded)
    assert toml is None
    args = shlex.split(command)
    assert args[args.index("--config") + 1] == "training/configs/names_mlp.toml"
    sets = [args[i + 1] for i, a in enumerate(args) if a == "--set"]
    assert sorted(sets) == ["max_iters=300", "model.n_hidden=64", "threads=2"]
    assert load_config(ROOT / "training/configs/names_mlp.toml", sets).model_dump() == recorded


def test_busy_warning_never_reads_zero_free_cores() -> None:
    full = busy_warning(2, 2, 3.5)
    assert full is not None and "no free core" in full and "0.0" not in full.split("load 3.5")[1]
    assert "about 2.5 free cores" in busy_warning(3, 4, 1.5)
    assert busy_warning(1, 4, 1.0) is None


def _sweep_start(min_lr: float, steps: int = 300, first: int = 12) -> dict:
    """The first `first` steps of a default-length names_gpt sweep from `min_lr` to 1.0."""
    import math

    import numpy as np
    import torch

    from training.lr_find import sweep
    from training.run import Run

    cfg = load_config("names_gpt", ["threads=1"])
    torch.manual_seed(cfg.seed)
    lrs = np.logspace(math.log10(min_lr), 0.0, steps)
    return sweep(Run(cfg, Path("unused")), first, min_lr, float(lrs[first - 1]))


@needs_names
def test_lr_find_starts_where_the_gpt_loss_is_flat() -> None:
    """From 1e-3, names_gpt's loss was still falling from its initial value (3.34 -> 2.8 in 12 steps), so
    the steepest descent sat at the sweep's left edge; the default now starts where it has not moved yet."""
    from training.cli import _parser

    default = _parser().parse_args(["lr-find", "--config", "names_gpt"]).min_lr
    start = _sweep_start(default)
    assert start["losses"][0] - start["smoothed"][-1] < 0.05, start["smoothed"]
    old = _sweep_start(1e-3)
    assert old["losses"][0] - old["smoothed"][-1] > 0.3, old["smoothed"]  # the old start: already falling fast
