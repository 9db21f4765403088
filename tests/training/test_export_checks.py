"""The exporter's own checks fail an export that does not match its net (a different model, an unmasked cache,
shared positions, training mode, a decode departure that is not a near-tie), and the export command line: its
options, its errors (exit 2, one line) and its entry points."""

from __future__ import annotations

import copy
import dataclasses
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from contract import Manifest
from engine.types import Completion, TokenLogprob
from tests.support.exports import (
    REPO,
    load_eager,
    make_checkpoint,
)
from training.checkpoint import META_FILE
from training.export import ExportError, ParityError
from training.export import core as export_core
from training.export.cli import main_export
from training.export.decode_parity import _first_difference, check_decode_parity, decode_requests
from training.export.graphs import eager_runner, graph_spec
from training.export.onnx import load_runner as onnx_runner
from training.export.parity import check_parity


def test_parity_check_catches_a_different_model(exported):
    ckpt, model_dir, _ = exported["gpt"]
    net = load_eager(ckpt)
    with torch.no_grad():
        net.lm_head.weight.add_(0.01)  # the export no longer matches this "eager" model
    spec = graph_spec("gpt", net)
    with pytest.raises(
        ParityError, match=r"^onnx parity check failed at idx \[1, 16\], pos \[0\], past 0: logits .* max abs"
    ):
        check_parity(spec, onnx_runner(model_dir / "model.onnx", spec), "onnx")


def test_parity_check_catches_unmasked_cache_and_shared_positions(exported):
    """A graph that attends to cache columns past a row's pos reads the checker's garbage; one that
    uses row 0's position for every row passes same-position batches but not the mixed one."""
    ckpt, _, _ = exported["gpt"]
    spec = graph_spec("gpt", load_eager(ckpt))
    eager = eager_runner(spec)

    def unmasked(arrays):
        return eager([arrays[0], np.full_like(arrays[1], arrays[3].shape[2]), *arrays[2:]])

    def shared_pos(arrays):
        return eager([arrays[0], np.full_like(arrays[1], arrays[1][0]), *arrays[2:]])

    with pytest.raises(ParityError, match=r"^onnx parity check failed at idx \[1, 1\], pos \[1\], past 16: logits"):
        check_parity(spec, unmasked, "onnx")
    with pytest.raises(ParityError, match=r"^torchscript parity check failed at row \d of idx \[7, \d+\], pos \["):
        check_parity(spec, shared_pos, "torchscript")


def test_parity_check_catches_training_mode(exported):
    ckpt, _, _ = exported["mlp"]
    net = load_eager(ckpt)
    spec = graph_spec("mlp", net)
    train_copy = copy.deepcopy(net).train()  # BatchNorm on batch statistics: rows depend on each other

    def run(arrays):
        with torch.no_grad():
            return [train_copy(torch.from_numpy(arrays[0]))[0].numpy()]

    with pytest.raises(ParityError, match="torchscript"):
        check_parity(spec, run, "torchscript")
    with pytest.raises(ExportError, match="training mode"):
        graph_spec("mlp", net.train())


def _export_perturbed(monkeypatch, fmt: str, perturb) -> None:
    """Make the real `fmt` exporter write a graph of the net with `perturb` applied to a copy of it."""
    real = export_core.EXPORTERS[fmt]

    def export(spec, path):
        bad = copy.deepcopy(spec.module)
        with torch.no_grad():
            perturb(bad.net)
        real(dataclasses.replace(spec, module=bad), path)

    monkeypatch.setitem(export_core.EXPORTERS, fmt, export)


def test_parity_failure_fails_the_export(tmp_path, monkeypatch, capsys):
    """A parity miss exits 2 with one line naming format, shapes and difference, and ships nothing."""
    ckpt = make_checkpoint(tmp_path / "ckpt", "bigram")
    _export_perturbed(monkeypatch, "onnx", lambda net: net.table.weight.mul_(1.01))
    out = tmp_path / "models" / "bad"
    assert main_export([str(ckpt), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("error: onnx parity check failed at idx [1, 1]") and "max abs diff" in err
    assert not out.exists() and list((tmp_path / "models").iterdir()) == []


def _files(model_dir: Path) -> dict[str, Path]:
    return {"onnx": model_dir / "model.onnx", "torchscript": model_dir / "model.ts"}


@pytest.mark.parametrize("arch", ["gpt", "mlp"])
def test_decode_parity_covers_the_options(exported, arch):
    """What every export decodes (it passed above, in the fixture): a GPT slides past block_size, a
    stream model's stop string fires, greedy and seeded top-k/top-p samples, with and without a prompt."""
    ckpt, model_dir, manifest = exported[arch]
    requests = decode_requests(arch, manifest.vocab, manifest.boundary_token, manifest.block_size)
    params = [r.params for r in requests]
    assert any(p.greedy for p in params) and any(p.seed is not None and p.temperature == 1 for p in params)
    assert any(p.top_k and p.top_p < 1 for p in params) and any(r.prompt for r in requests)
    if arch == "gpt":  # a `lines` GPT: whole samples, and one past its boundary that slides
        assert any(p.ignore_eos and p.max_new_tokens > manifest.block_size for p in params)
    check_decode_parity(load_eager(ckpt), arch, manifest.vocab, manifest.boundary_token, _files(model_dir))


def test_decode_parity_accepts_a_departure_only_at_a_near_tie():
    """Seeded draws may part at a near-tie (torch and ONNX Runtime differ by ~1e-6): accepted when both
    sides gave the same distribution there, a failure when they did not."""

    def decoded(text: str, at_1: tuple[tuple[int, float], ...]) -> Completion:
        lps = (TokenLogprob(0, -0.1, ((0, -0.1), (1, -2.4), (2, -2.4))), TokenLogprob(1, -0.69, at_1))
        return Completion(text, "length", 0, 2, lps)

    tie = ((1, -0.6931472), (2, -0.6931475), (0, -9.0))
    assert _first_difference(decoded("ab", tie), decoded("ac", tie)) is None
    assert _first_difference(decoded("ab", tie), decoded("ab", tie)) is None
    moved = ((1, -0.5), (2, -0.9), (0, -9.0))
    miss = _first_difference(decoded("ab", tie), decoded("ac", moved))
    assert miss is not None and "at character 1 (max logprob difference there 2.07e-01)" in miss, miss


@pytest.mark.parametrize("arch", ["gpt", "mlp"])
def test_decode_parity_catches_a_different_model(exported, arch):
    """The real exports against an eager net whose weights moved: one line naming the backend, the
    request and the first character that differs."""
    ckpt, model_dir, manifest = exported[arch]
    net = load_eager(ckpt)
    with torch.no_grad():
        gen = torch.Generator().manual_seed(0)
        for p in net.parameters():
            p.add_(0.5 * torch.randn(p.shape, generator=gen))
    with pytest.raises(ParityError) as caught:
        check_decode_parity(net, arch, manifest.vocab, manifest.boundary_token, _files(model_dir))
    msg = str(caught.value)
    assert "\n" not in msg
    assert re.match(
        r"^onnx decode parity failed \(prompt '', greedy, max_new_tokens \d+\): "
        r"text differs from the eager net's at character \d+ "
        r"\(max logprob difference there [0-9.e+-]+\): .+ vs eager .+$",
        msg,
    ), msg


def test_decode_parity_failure_fails_the_export(tmp_path, monkeypatch, capsys):
    """The decode check is wired into the export: with the logits checks switched off, a graph of
    other weights is still refused by it, with one line, and nothing is shipped."""
    ckpt = make_checkpoint(tmp_path / "ckpt", "gpt")
    _export_perturbed(monkeypatch, "torchscript", lambda net: net.lm_head.weight.mul_(-1.0))
    monkeypatch.setattr(export_core, "check_parity", lambda spec, runner, fmt: None)
    out = tmp_path / "models" / "bad"
    assert main_export([str(ckpt), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("error: torchscript decode parity failed (prompt '', greedy") and "character" in err
    assert not out.exists() and list((tmp_path / "models").iterdir()) == []


def test_cli_success_with_options(tmp_path, capsys):
    ckpt = make_checkpoint(tmp_path / "ckpt", "bigram")
    out = tmp_path / "models" / "Some-Folder"
    assert main_export([str(ckpt), "--out", str(out), "--formats", "onnx", "--name", "names-bigram"]) == 0
    assert "exported names-bigram" in capsys.readouterr().out
    manifest = Manifest.load(out)
    assert manifest.name == "names-bigram" and set(manifest.files) == {"onnx"}
    assert not (out / "model.ts").exists()
    assert "--formats onnx --name names-bigram" in (out / "README.md").read_text()
    # --force replaces a model folder ...
    assert main_export([str(ckpt), "--out", str(out), "--name", "names-bigram", "--force"]) == 0
    assert set(Manifest.load(out).files) == {"onnx", "torchscript"}
    # ... but never a folder that is not one
    other = tmp_path / "not-a-model"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    assert main_export([str(ckpt), "--out", str(other), "--force"]) == 2
    assert (other / "notes.txt").read_text() == "keep me"


def _one_line_error(capsys, argv: list[str], needle: str) -> None:
    assert main_export(argv) == 2
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1, captured.err
    assert captured.err.startswith("error: ") and "Traceback" not in captured.err
    assert needle in captured.err, captured.err


def test_cli_errors(tmp_path, exported, capsys):
    out = str(tmp_path / "models" / "x")
    _one_line_error(capsys, [str(tmp_path / "nope"), "--out", out], "no such checkpoint folder")
    _one_line_error(capsys, [str(tmp_path), "--out", out], f"not a checkpoint (no {META_FILE})")

    ckpt, model_dir, _ = exported["bigram"]
    _one_line_error(capsys, [str(ckpt), "--out", str(model_dir)], "already exists (pass --force")

    weird = make_checkpoint(tmp_path / "weird", "bigram")
    raw = json.loads((weird / META_FILE).read_text())
    (weird / META_FILE).write_text(json.dumps({**raw, "arch": "transformer-xl"}))
    _one_line_error(capsys, [str(weird), "--out", out], "unknown architecture 'transformer-xl'")

    fresh = make_checkpoint(tmp_path / "fresh", "bigram", losses=False)
    _one_line_error(capsys, [str(fresh), "--out", out], "has not been evaluated")

    _one_line_error(capsys, [str(ckpt), "--out", str(tmp_path / "Bad Name")], "invalid model name")
    _one_line_error(capsys, [str(ckpt), "--out", out, "--formats", "onnx,tflite"], "unknown format(s) tflite")
    assert not (tmp_path / "models").exists()
    assert main_export([]) == 2  # argparse's usage error comes back as a code, not a SystemExit
    assert "--out" in capsys.readouterr().err


@pytest.mark.parametrize("module", ["training.export", "training.export.cli"])
def test_cli_entry_points(tmp_path, module):
    """`python -m ...` as a user runs it: exit 2, one line on stderr, no traceback, and no torch import
    (a mistyped path is reported before the heavy imports)."""
    runner = (
        "import runpy, sys; sys.argv[0] = 'x'; "
        f"code = 0\ntry: runpy.run_module({module!r}, run_name='__main__', alter_sys=True)\n"
        "except SystemExit as exc: code = exc.code\n"
        "assert 'torch' not in sys.modules, 'torch was imported'; sys.exit(code)"
    )
    for argv in ([sys.executable, "-m", module], [sys.executable, "-c", runner]):
        result = subprocess.run(
            [*argv, str(tmp_path / "missing"), "--out", str(tmp_path / "out")],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert (result.returncode, result.stderr) == (
            2,
            f"error: {tmp_path / 'missing'}: no such checkpoint folder\n",
        )


def test_preflight_meta_file_name_matches_checkpoint_module():
    from training.export import preflight

    assert preflight.META_FILE == META_FILE
