"""Every expected error of python -m training train as a user meets it: exit 2, one line on stderr, no traceback;
and how the built-in datasets are found."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.training_cli import QUIET, ROOT, TINY_GPT, charlm, env, ok, one_line_error, require_names

pytest.importorskip("torch")
require_names()


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
