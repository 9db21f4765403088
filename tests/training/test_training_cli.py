"""`python -m training ...` as a user runs it (subprocesses): resume equivalence, a 2-process torchrun
run, --diagnostics and lr-find outputs, and every expected error as one line on stderr with exit 2.

Runs are tiny (a few steps, small nets, threads=1); the data comes from $CHARLM_DATA_DIR (the
Makefile sets it), falling back to the checkout's ../shared/data.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("matplotlib")

ROOT = Path(__file__).resolve().parents[2]
DATA_DIR = Path(os.environ.get("CHARLM_DATA_DIR") or ROOT.parent / "shared" / "data")
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
    return torch.load(folder / "state.pt", map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def gpt_run(tmp_path_factory) -> Path:
    """A tiny GPT trained 20 steps in one go (the reference for resume; a checkpoint for the rest)."""
    out = tmp_path_factory.mktemp("gpt") / "straight"
    ok(charlm("train", *TINY_GPT, "--set", "max_iters=20", "--out", str(out)))
    return out


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


# ---- expected errors: exit 2, one line on stderr, no traceback ----


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def train_on(data: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    return charlm("train", "--config", "names_bigram", "--data", str(data), "--format", "lines", *QUIET,
                  "--out", str(tmp_path / "out"))  # fmt: skip


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ("", "empty"),
        ("\n  \n", "empty"),
        ("just one line\n", "need at least 3"),
        ("aaa\naa\na\naaaa\n", "vocabulary of 1 character"),
    ],
    ids=["empty", "blank", "one-line", "one-char-vocab"],
)
def test_unusable_data_files(content: str, fragment: str, tmp_path: Path) -> None:
    one_line_error(train_on(write(tmp_path / "data.txt", content), tmp_path), fragment)


def test_missing_data_file(tmp_path: Path) -> None:
    one_line_error(train_on(tmp_path / "nope.txt", tmp_path), "does not exist")


def test_config_with_unknown_key(tmp_path: Path) -> None:
    config = (
        (ROOT / "training" / "configs" / "names_bigram.toml")
        .read_text()
        .replace("[model]", "learning_rat = 0.1\n\n[model]")
    )
    path = write(tmp_path / "typo.toml", config)
    one_line_error(charlm("train", "--config", str(path), "--out", str(tmp_path / "o")), "learning_rat", "unknown")
    one_line_error(
        charlm("train", "--config", "names_gpt", "--set", "model.n_layers=2", "--out", str(tmp_path / "p")), "n_layers"
    )


def test_negative_value(tmp_path: Path) -> None:
    proc = charlm("train", "--config", "names_bigram", "--set", "batch_size=-1", "--out", str(tmp_path / "o"))
    one_line_error(proc, "batch_size")


def test_existing_checkpoint_needs_resume(gpt_run: Path) -> None:
    one_line_error(charlm("train", *TINY_GPT, "--out", str(gpt_run)), "already holds a checkpoint", "--resume")


def test_resume_with_a_mismatched_config_names_the_keys(tmp_path: Path) -> None:
    out = tmp_path / "plain"
    ok(charlm("train", *TINY_GPT, "--set", "ema_decay=0", "--set", "max_iters=4", "--out", str(out)))
    wider = charlm("train", *TINY_GPT, "--set", "model.n_embd=32", "--set", "max_iters=8", "--set", "model.n_layer=2",
                   "--out", str(out), "--resume")  # fmt: skip
    one_line_error(wider, "--resume", "model.n_embd (16 -> 32)", "model.n_layer (1 -> 2)", "ema_decay (0.0 -> 0.9)")
    # the schedule and dropout may change: this one continues
    ok(charlm("train", *TINY_GPT, "--set", "ema_decay=0", "--set", "max_iters=8", "--set", "model.dropout=0.0",
              "--out", str(out), "--resume"))  # fmt: skip


def test_out_pointing_at_a_file(tmp_path: Path) -> None:
    target = write(tmp_path / "notes.txt", "not a run folder\n")
    one_line_error(charlm("train", *TINY_GPT, "--out", str(target)), "is a file")
    one_line_error(charlm("lr-find", "--config", "names_bigram", "--out", str(target)), "is a file")


def test_lines_longer_than_block_size(tmp_path: Path) -> None:
    """No silent cut: an error naming the longest line and the setting; "auto" derives the block size."""
    lines = [("the quick brown fox jumps " * 3)[: 30 + (7 * i) % 31] for i in range(40)]
    data = write(tmp_path / "sentences.txt", "\n".join(lines) + "\n")
    args = ["train", *TINY_GPT, "--data", str(data), "--format", "lines", "--set", "max_iters=2"]
    longest = max(len(x) for x in lines)
    line = one_line_error(charlm(*args, "--out", str(tmp_path / "a")), "longer than block_size - 1 = 15",
                          f"{longest} characters", f"model.block_size={longest + 1}", "auto")  # fmt: skip
    assert f"line {1 + max(range(40), key=lambda i: len(lines[i]))}," in line
    proc = ok(charlm(*args, "--set", "model.block_size=auto", "--out", str(tmp_path / "b")))
    assert f"block {longest + 1} (derived from the data; longest line {longest}, 0 lines cut)" in proc.stdout
    meta = json.loads((tmp_path / "b" / "checkpoint.json").read_text())
    assert meta["model"]["block_size"] == longest + 1
    assert meta["lines"] == {"longest": longest, "block_size": longest + 1, "block_size_from": "auto", "over_block": 0}


def test_stream_data_shorter_than_the_context(tmp_path: Path) -> None:
    data = write(tmp_path / "short.txt", "To be, or not to be, that is the question.\n" * 6)
    proc = charlm("train", "--config", "shakespeare_gpt", "--data", str(data), "--format", "stream", *QUIET,
                  "--out", str(tmp_path / "o"))  # fmt: skip
    one_line_error(proc, "val split", "fewer than block_size + 1 = 129", "model.block_size")


def test_divergence_stops_at_the_first_nan(tmp_path: Path) -> None:
    """A huge LR: the first non-finite loss stops the run (not all its steps), one line, exit 2, and the
    checkpoint of the last good eval stays loadable."""
    out = tmp_path / "nan"
    proc = charlm("train", "--config", "names_mlp", "--set", "model.n_hidden=16", "--set", "learning_rate=1e6",
                  "--set", "min_lr=0", "--set", "warmup_iters=50", "--set", "max_iters=200", "--set", "eval_interval=5",
                  *QUIET, "--out", str(out))  # fmt: skip
    line = one_line_error(proc, "diverged at step", "nan", "kept checkpoint is step 5", "lower learning_rate")
    step = int(re.search(r"diverged at step (\d+)", line)[1])
    assert 5 < step < 50
    assert len((out / "metrics.jsonl").read_text().splitlines()) == (step - 1) // 5
    ok(charlm("eval", str(out), "--split", "val"))


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


def test_resume_without_state(tmp_path: Path) -> None:
    one_line_error(charlm("train", *TINY_GPT, "--out", str(tmp_path / "fresh"), "--resume"), "--resume")


def test_prompt_outside_vocabulary(gpt_run: Path) -> None:
    ok(charlm("sample", str(gpt_run), "-n", "2", "--prompt", "em", "--seed", "1"))
    one_line_error(charlm("sample", str(gpt_run), "--prompt", "Zoë!"), "outside the vocabulary", "'Z'", "'!'")


@pytest.mark.parametrize("model", ["wavenet-config", "gpt-config"])
def test_checkpoint_of_another_architecture(model: str, gpt_run: Path, tmp_path: Path) -> None:
    """checkpoint.json says wavenet, the weights are a GPT's."""
    ckpt = tmp_path / "ckpt"
    shutil.copytree(gpt_run, ckpt)
    meta = json.loads((ckpt / "checkpoint.json").read_text())
    meta["arch"] = "wavenet"
    if model == "wavenet-config":  # a valid wavenet config: the weights do not fit it
        meta["model"] = {"vocab_size": 27, "block_size": 8, "n_embd": 24, "n_hidden": 128}
    (ckpt / "checkpoint.json").write_text(json.dumps(meta))
    one_line_error(charlm("sample", str(ckpt)), "wavenet")


# ---- finding the built-in datasets ----


def test_no_data_anywhere_names_three_ways(tmp_path: Path) -> None:
    """No $CHARLM_DATA_DIR, an empty cache, no network (a dead proxy): one line naming all three ways."""
    dead = "http://127.0.0.1:9"
    proxies = {"HTTPS_PROXY": dead, "HTTP_PROXY": dead, "https_proxy": dead, "http_proxy": dead}
    environ = env(CHARLM_DATA_DIR=None, XDG_CACHE_HOME=str(tmp_path / "cache"), NO_PROXY="", no_proxy="", **proxies)
    proc = charlm("train", "--config", "names_bigram", "--out", str(tmp_path / "o"), environ=environ)
    one_line_error(proc, "cannot download names", "--data", "$CHARLM_DATA_DIR", str(tmp_path / "cache"), "https://")
    assert not (tmp_path / "cache" / "charlm" / "names.txt").exists()


def test_wrong_file_in_data_dir(tmp_path: Path) -> None:
    write(tmp_path / "names.txt", "emma\nolivia\nava\n")
    proc = charlm("train", "--config", "names_bigram", "--out", str(tmp_path / "o"),
                  environ=env(CHARLM_DATA_DIR=str(tmp_path)))  # fmt: skip
    one_line_error(proc, "sha256 does not match", "--data")
