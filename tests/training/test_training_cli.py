"""`python -m training ...` as a user runs it (subprocesses): resume equivalence, a 2-process torchrun
run, --diagnostics and lr-find outputs (the expected errors: test_training_errors.py).

Runs are tiny (a few steps, small nets, threads=1); the data comes from $CHARLM_DATA_DIR (the
Makefile sets it), falling back to the checkout's ../shared/data.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.training_cli import (
    QUIET,
    ROOT,
    TINY_GPT,
    charlm,
    env,
    final_state,
    ok,
    require_names,
)

torch = pytest.importorskip("torch")
pytest.importorskip("matplotlib")
require_names()


def test_train_writes_checkpoint_metrics_and_loss_plot(gpt_run: Path) -> None:
    meta = json.loads((gpt_run / "checkpoint.json").read_text())
    assert meta["arch"] == "gpt" and meta["test_loss"] is not None
    # names.txt repeats names across splits: the unseen test names are a harder, separate figure
    assert meta["test_loss_unseen"] is not None and meta["test_loss_unseen"] != meta["test_loss"]
    assert meta["lines"] == {"longest": 15, "block_size": 16, "block_size_from": "config", "over_block": 0}
    rows = [json.loads(line) for line in (gpt_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [4, 8, 12, 16, 20]
    assert all(
        {"val_loss", "val_loss_ema", "train_loss_ema", "best_val", "lr", "tokens_per_s"} <= r.keys() for r in rows
    )
    assert (gpt_run / "plots" / "loss.png").stat().st_size > 1000


def test_tensorboard_event_files_next_to_metrics(gpt_run: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(gpt_run))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"loss/train", "loss/val", "loss/val_ema", "train/lr", "train/tokens_per_s"} <= tags
    assert [e.step for e in events.Scalars("loss/val")] == [4, 8, 12, 16, 20]


def test_eval_test_unseen_matches_the_checkpoint(gpt_run: Path) -> None:
    meta = json.loads((gpt_run / "checkpoint.json").read_text())
    printed = ok(charlm("eval", str(gpt_run), "--split", "test_unseen")).stdout.strip()
    assert float(printed) == pytest.approx(meta["test_loss_unseen"], abs=1e-4)


def test_resume_is_equivalent_to_one_run(gpt_run: Path, tmp_path: Path) -> None:
    """10 steps, then --resume to 20 == 20 steps in one go: weights, optimizer, RNG, metrics."""
    out = tmp_path / "resumed"
    ok(charlm("train", *TINY_GPT, "--set", "max_iters=10", "--out", str(out)))
    resumed = ok(charlm("train", *TINY_GPT, "--set", "max_iters=20", "--out", str(out), "--resume"))
    assert "initial loss" not in resumed.stdout  # only a fresh run checks it
    a, b = final_state(gpt_run), final_state(out)
    assert a["step"] == b["step"] == 20
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    for pid, state in a["optimizer"]["state"].items():
        for key, value in state.items():
            assert torch.equal(value, b["optimizer"]["state"][pid][key]), (pid, key)
    assert all(torch.equal(x, y) for x, y in zip(a["torch_rng"], b["torch_rng"], strict=True))
    for name, tensor in a["ema"].items():
        assert torch.equal(tensor, b["ema"][name]), name

    def metrics(folder: Path) -> dict[int, tuple[float, float]]:
        rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
        return {r["step"]: (r["train_loss"], r["val_loss"]) for r in rows}

    straight, split = metrics(gpt_run), metrics(out)
    assert sorted(split) == [4, 8, 10, 12, 16, 20]
    assert all(straight[s] == split[s] for s in (4, 8, 12, 16, 20))


def test_checkpoint_holds_the_better_of_raw_and_ema(gpt_run: Path) -> None:
    """With ema_decay both weights are evaluated; the checkpoint (what export ships) is the better on val,
    and checkpoint.json says which."""
    from safetensors.torch import load_file

    meta = json.loads((gpt_run / "checkpoint.json").read_text())
    rows = {r["step"]: r for r in map(json.loads, (gpt_run / "metrics.jsonl").read_text().splitlines())}
    assert meta["step"] == 20  # this seeded run's val improves to the end: best = last
    row = rows[20]
    expected = "ema" if row["val_loss_ema"] <= row["val_loss"] else "raw"
    assert meta["weights"] == expected
    shipped, state = load_file(gpt_run / "model.safetensors"), final_state(gpt_run)
    assert shipped.keys() <= state["model"].keys()
    for name, tensor in shipped.items():
        source = state["ema"][f"module.{name}"] if expected == "ema" else state["model"][name]
        assert torch.equal(tensor, source), name
    assert any(not torch.equal(t, state["model"][n]) for n, t in shipped.items()) == (expected == "ema")


def test_torchrun_two_processes_on_cpu(tmp_path: Path) -> None:
    """DDP over gloo: both ranks train, rank 0 alone logs and writes the checkpoint."""
    out = tmp_path / "ddp"
    proc = subprocess.run(
        [
            sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
            "-m", "training", "train", "--config", "names_mlp", "--set", "max_iters=20",
            "--set", "eval_interval=10", "--set", "model.n_hidden=32", *QUIET, "--out", str(out),
        ],
        cwd=ROOT, env=env(), capture_output=True, text=True, timeout=1800,
    )  # fmt: skip
    ok(proc)
    assert "1 thread(s) x 2 processes" in proc.stdout
    assert proc.stdout.count("initial loss") == 1
    meta = json.loads((out / "checkpoint.json").read_text())
    assert meta["step"] in (10, 20) and meta["test_loss"] is not None
    rows = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["step"] for r in rows] == [10, 20]
    state = final_state(out)
    assert len(state["generators"]) == 2  # each rank's batch stream, for --resume
    assert len(state["torch_rng"]) == 2  # and its own dropout stream
    assert not torch.equal(*state["torch_rng"])


def test_diagnostics_writes_numbers_and_plots(tmp_path: Path) -> None:
    out = tmp_path / "diag"
    ok(
        charlm(
            "train", "--config", "names_wavenet", "--diagnostics", "--set", "max_iters=12",
            "--set", "eval_interval=6", "--set", "model.n_embd=8", "--set", "model.n_hidden=16",
            *QUIET, "--out", str(out),
        )
    )  # fmt: skip
    rows = [json.loads(line) for line in (out / "diagnostics.jsonl").read_text().splitlines()]
    records = [r for r in rows if "hist" not in r]
    assert [r["step"] for r in records] == [0, 1, 2, 3, 5, 7, 10]
    tanh = records[0]["activations"]["body.4 (tanh)"]
    assert 0 <= tanh["saturation"] <= 1 and tanh["std"] > 0 and tanh["grad_std"] > 0
    assert records[-1]["params"]["head.weight"]["update_ratio_log10"] < 0
    pngs = {p.name for p in (out / "plots").glob("*.png")}
    assert pngs == {"loss.png", "activations.png", "activation_grads.png", "weight_grads.png", "update_ratio.png"}


def test_lr_find_writes_plot_and_suggests(tmp_path: Path) -> None:
    out = tmp_path / "lr"
    proc = ok(
        charlm(
            "lr-find", "--config", "names_bigram", "--steps", "40", "--min-lr", "0.01", "--max-lr", "100",
            "--set", "threads=1", "--set", "batch_size=64", "--out", str(out),
        )
    )  # fmt: skip
    last = proc.stdout.strip().splitlines()[-1]
    match = re.match(r"suggested learning_rate = ([0-9.e+-]+) ", last)
    assert match, last
    report = json.loads((out / "lr_find.json").read_text())
    assert float(match[1]) == pytest.approx(report["suggested_lr"], rel=1e-3)
    assert report["suggested_lr"] == pytest.approx(report["lr_at_min_loss"] / 3)
    assert 2 <= report["steps_run"] <= 40 and len(report["losses"]) == report["steps_run"]
    assert (out / "lr_find.png").stat().st_size > 1000


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(c) for c in path.read_text().split()] if path.is_file() else []


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs /proc to find torchrun's workers")
def test_ctrl_c_under_torchrun_exits_130_on_every_rank(tmp_path: Path) -> None:
    """SIGINT to both workers (what Ctrl+C delivers, before torchrun forwards its own): each rank exits
    130 with no traceback; torchrun reports both exit codes (and, being torchrun, its own traceback)."""
    out = tmp_path / "ddp"
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
            "-m", "training", "train", "--config", "names_mlp", "--set", "max_iters=1000000",
            "--set", "eval_interval=10", "--set", "model.n_hidden=16", *QUIET, "--out", str(out),
        ],
        cwd=ROOT, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        state, deadline = out / "state.pt", time.time() + 300
        while not state.is_file():  # the first eval's save is done (metrics.jsonl is written before it)
            assert proc.poll() is None and time.time() < deadline, "the run did not reach its first eval"
            time.sleep(0.2)
        workers = _children(proc.pid)
        assert len(workers) == 2
        for pid in workers:
            os.kill(pid, signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    # torchrun's own report of the failed children is a traceback of the launcher; none from the workers
    assert "KeyboardInterrupt" not in stderr and f"{ROOT / 'training'}" not in stderr, stderr[-3000:]
    assert re.findall(r"rank\s+: (\d)", stderr) and stderr.count("exitcode  : 130") == 2, stderr[-3000:]
    assert "interrupted at step" in stdout
    assert (out / "state.pt").is_file()
