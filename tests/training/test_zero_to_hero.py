"""docs/zero-to-hero.md cannot rot: every `python -m training` command in its ```sh blocks runs, in order,
in a quick mode (a few steps, a small GPT on Shakespeare), from a scratch folder that sees the shipped
models; each must exit 0 and leave what the page says it leaves."""

from __future__ import annotations

import os
import re
import shlex
import signal
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "zero-to-hero.md"
DATA_DIR = Path(os.environ.get("CHARLM_DATA_DIR") or ROOT.parent / "shared" / "data")
if not all((DATA_DIR / f).is_file() for f in ("names.txt", "tinyshakespeare.txt")):
    pytest.skip(f"the corpora are not in {DATA_DIR}; set CHARLM_DATA_DIR", allow_module_level=True)

QUICK_TRAIN = ["--set", "max_iters=6", "--set", "eval_interval=3", "--set", "eval_iters=1", "--set", "samples=2",
               "--set", "warmup_iters=1"]  # fmt: skip
SMALL_GPT = ["--set", "model.n_layer=1", "--set", "model.n_head=2", "--set", "model.n_embd=32",
             "--set", "model.block_size=32"]  # fmt: skip
QUICK = {  # what each subcommand gets appended in quick mode (argparse: the last value of an option wins)
    "micrograd": ["--steps", "3", "--samples", "8"],
    "lr-find": ["--steps", "20"],
    "ninja": ["--steps", "20"],
}


def page_commands() -> list[list[str]]:
    """The `python -m training ...` lines of the page's ```sh blocks, as argument lists (comments dropped)."""
    blocks = re.findall(r"^```sh\n(.*?)^```", PAGE.read_text(), flags=re.S | re.M)
    lines = [ln for block in blocks for ln in block.splitlines()]
    return [shlex.split(ln, comments=True)[3:] for ln in lines if ln.startswith("python -m training ")]


def quick(args: list[str]) -> list[str]:
    command = args[0] if args[0] != "launch" else "train"
    extra = list(QUICK.get(command, []))
    if command == "train":
        # the GPTs small too: the kept checkpoint's exact losses cover whole splits (names_gpt's took 24 s)
        extra += QUICK_TRAIN + (SMALL_GPT if {"shakespeare_gpt", "names_gpt"} & set(args) else [])
    return [*args, *extra]


def test_the_page_has_a_command_for_every_lecture() -> None:
    commands = page_commands()
    assert {c[0] for c in commands} >= {"micrograd", "counts", "train", "lr-find", "ninja", "sample", "eval",
                                        "launch", "export", "verify"}  # fmt: skip
    configs = {c[c.index("--config") + 1] for c in commands if "--config" in c}
    assert configs >= {"names_bigram", "names_mlp", "names_wavenet", "shakespeare_gpt", "names_gpt"}
    assert any("--diagnostics" in c for c in commands)
    assert all("runs/" not in " ".join(c) or "--out" in c or c[0] in ("sample", "eval", "export") for c in commands)


def test_every_command_on_the_page_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """In this process (`training.cli.main`, as `python -m training` calls it): one torch import for the
    page, not one per command. `launch` still starts its two ranks as processes."""
    from training.cli import main

    (tmp_path / "models").mkdir()
    for shipped in (ROOT / "models").iterdir():
        (tmp_path / "models" / shipped.name).symlink_to(shipped)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CHARLM_DATA_DIR", str(DATA_DIR))
    monkeypatch.setenv("PYTHONPATH", str(ROOT))  # for launch's ranks
    handled = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)  # train and launch set handlers
    before = {sig: signal.getsignal(sig) for sig in handled}
    threads = torch.get_num_threads()
    try:
        for args in page_commands():
            full = quick(args)
            code = main(full)
            out = capsys.readouterr()
            assert code == 0, f"{shlex.join(full)}: exit {code}\n{out.err[-2000:]}"
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)
        torch.set_num_threads(threads)
    runs = tmp_path / "runs"
    assert (runs / "micrograd" / "boundary.png").is_file() and (runs / "micrograd" / "graph.dot").is_file()
    assert (runs / "bigram-counts" / "counts.png").is_file()
    assert (runs / "names_mlp-lr-find" / "lr_find.png").is_file()
    assert (runs / "names_mlp" / "plots" / "update_ratio.png").is_file()
    for run in ("names_bigram", "names_mlp", "mlp-no-bn", "names_wavenet", "shakespeare_gpt", "names_gpt-ddp"):
        assert (runs / run / "lossi.csv").is_file() and (runs / run / "plots" / "loss.png").is_file(), run
    assert (tmp_path / "models" / "my-mlp" / "curve.png").is_file()
