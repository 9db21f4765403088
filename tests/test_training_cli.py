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
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("matplotlib")

ROOT = Path(__file__).resolve().parents[1]
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
    steps = [json.loads(line)["step"] for line in (gpt_run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [4, 8, 12, 16, 20]
    assert (gpt_run / "plots" / "loss.png").stat().st_size > 1000


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


def test_checkpoint_holds_the_weight_average(gpt_run: Path) -> None:
    """With ema_decay the checkpoint (what export ships) is the averaged weights, not the last step's."""
    from safetensors.torch import load_file

    meta = json.loads((gpt_run / "checkpoint.json").read_text())
    assert meta["step"] == 20  # this seeded run's val improves to the end: best = last
    shipped, state = load_file(gpt_run / "model.safetensors"), final_state(gpt_run)
    assert shipped.keys() <= state["model"].keys()
    for name, tensor in shipped.items():
        assert torch.equal(tensor, state["ema"][f"module.{name}"]), name
    assert any(not torch.equal(t, state["model"][n]) for n, t in shipped.items())


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
    assert "2 processes" in proc.stdout
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
    assert report["suggested_lr"] == pytest.approx(report["lr_at_min_loss"] / 10)
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


def test_resume_adding_an_ema_to_a_run_without_one(tmp_path: Path) -> None:
    out = tmp_path / "plain"
    ok(charlm("train", *TINY_GPT, "--set", "ema_decay=0", "--set", "max_iters=4", "--out", str(out)))
    resumed = charlm("train", *TINY_GPT, "--set", "max_iters=8", "--out", str(out), "--resume")
    one_line_error(resumed, "--resume", "without ema_decay")


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
