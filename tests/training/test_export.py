"""training.export: tiny random models of every family -> model folders that validate and match eager.

Parity is checked twice: by the exporter itself (training.export.parity, at every export) and here,
independently, by loading the files as a consumer would (onnxruntime / torch.jit.load).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from contract import Manifest, ManifestError, new_kv_names, past_names
from engine.types import Completion, TokenLogprob
from training.checkpoint import META_FILE, CheckpointMeta, SplitInfo, save_checkpoint
from training.export import ExportError, ParityError, export_checkpoint
from training.export import core as export_core
from training.export.cli import main_export
from training.export.decode_parity import _first_difference, check_decode_parity, decode_requests
from training.export.graphs import eager_runner, graph_spec
from training.export.onnx import load_runner as onnx_runner
from training.export.parity import check_parity
from training.nets import build, n_params

REPO = Path(__file__).resolve().parents[2]
LINES_VOCAB = list(".abcdefghijklmnopqrstuvwxyz")
STREAM_VOCAB = list("\n !',.?abcdefghijklmnopqrstuvwxyz")
# One tiny net per family; mlp is a `stream` model so that both text formats go through the card.
MODELS = {
    "bigram": ("lines", {}),
    "mlp": ("stream", {"block_size": 3, "n_embd": 4, "n_hidden": 16}),
    "wavenet": ("lines", {"block_size": 8, "n_embd": 4, "n_hidden": 16}),
    "gpt": ("lines", {"block_size": 16, "n_layer": 2, "n_head": 2, "n_embd": 16}),
}
ARCHS = list(MODELS)
TOL = 1e-4


def make_checkpoint(folder: Path, arch: str, *, losses: bool = True, seed: int = 0) -> Path:
    """A randomly initialised (not trained) net saved as a checkpoint with made-up metadata."""
    fmt, extra = MODELS[arch]
    vocab = LINES_VOCAB if fmt == "lines" else STREAM_VOCAB
    config = {"vocab_size": len(vocab), **extra}
    torch.manual_seed(seed)
    net = build(arch, config)
    with torch.no_grad():  # non-trivial weights and BatchNorm statistics: train mode would differ from eval
        for p in net.parameters():
            p.normal_(0.0, 0.5)
        for name, b in net.named_buffers():
            if name.endswith("running_mean"):
                b.normal_(0.0, 0.5)
            elif name.endswith("running_var"):
                b.uniform_(0.5, 2.0)
    meta = CheckpointMeta(
        arch=arch,
        model=config,
        vocab=vocab,
        format=fmt,
        boundary_token=0 if fmt == "lines" else None,
        data=SplitInfo(name="names", sha256="ab" * 32, split_seed=42, split_fractions=(0.8, 0.1, 0.1)),
        train_config={"name": f"test-{arch}", "arch": arch, "max_steps": 10},
        step=10,
        train_loss=2.5 if losses else None,
        val_loss=2.6 if losses else None,
        test_loss=2.7 if losses else None,
        wall_seconds=3.5,
    )
    save_checkpoint(folder, net, meta)
    return folder


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Tiny models gain nothing from intra-op threads, and on busy shared cores the spinning costs."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict[str, tuple[Path, Path, Manifest]]:
    """Each family exported once (both formats); tests share the folders and must not modify them."""
    root = tmp_path_factory.mktemp("export")
    out = {}
    for arch in ARCHS:
        ckpt = make_checkpoint(root / "ckpt" / arch, arch)
        model_dir = root / "models" / f"test-{arch}"
        out[arch] = (ckpt, model_dir, export_checkpoint(ckpt, model_dir))
    return out


def load_eager(ckpt: Path) -> torch.nn.Module:
    from training.checkpoint import load_checkpoint

    return load_checkpoint(ckpt)[0]


def ort_session(path: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def ts_module(path: Path) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return torch.jit.load(str(path))


# --- manifest, files, card ------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
def test_manifest_validates_and_files_match(exported, arch):
    ckpt, model_dir, manifest = exported[arch]
    loaded = Manifest.load(model_dir)
    loaded.verify_files(model_dir)
    assert loaded == manifest
    net = load_eager(ckpt)
    assert loaded.name == f"test-{arch}" and loaded.arch == arch
    assert loaded.n_params == n_params(net)
    assert loaded.block_size == net.cfg.block_size
    assert set(loaded.files) == {"onnx", "torchscript"}
    assert (loaded.files["onnx"].path, loaded.files["torchscript"].path) == ("model.onnx", "model.ts")
    assert (loaded.metrics.train_loss, loaded.metrics.val_loss, loaded.metrics.test_loss) == (2.5, 2.6, 2.7)
    assert loaded.training.steps == 10 and loaded.training.config["name"] == f"test-{arch}"
    assert loaded.data.name == "names" and loaded.data.split_seed == 42
    assert loaded.net_config == {"vocab_size": net.cfg.vocab_size, **MODELS[arch][1]}
    assert loaded.weights.path == "model.safetensors"
    assert (model_dir / "model.safetensors").read_bytes() == (ckpt / "model.safetensors").read_bytes()
    assert loaded.metrics.test_loss_unseen is None
    if arch == "gpt":
        assert (loaded.n_layer, loaded.n_head, loaded.head_dim) == (2, 2, 8)
    else:
        assert loaded.n_layer is loaded.n_head is loaded.head_dim is None
    # exactly these files, and nothing of the staging folder left behind
    assert sorted(p.name for p in model_dir.iterdir()) == [
        "README.md",
        "manifest.json",
        "model.onnx",
        "model.safetensors",
        "model.ts",
    ]
    assert sorted(p.name for p in model_dir.parent.iterdir()) == sorted(f"test-{a}" for a in ARCHS)


@pytest.mark.parametrize("arch", ARCHS)
def test_model_card(exported, arch):
    _, model_dir, manifest = exported[arch]
    card = (model_dir / "README.md").read_text()
    assert card.startswith(f"# test-{arch}\n")
    for needle in (
        "2.7000",  # test loss, nats/char
        "nats/char",
        "python -m training train --config config.toml",  # no test-<arch>.toml exists: the recorded config
        f'name = "test-{arch}"',
        f"python -m training export {model_dir.parent.parent / 'ckpt' / arch} --out {model_dir}",
        "## Limitations",
        "3.5 s",  # wall time
        f"{manifest.n_params:,} parameters",
    ):
        assert needle in card, needle
    samples = card.split("## Samples")[1].split("## Files")[0]
    if manifest.format == "lines":
        body = samples.split("```text\n")[1].split("\n```")[0]
        assert len(body.splitlines()) == 10 and "." not in body  # boundary-to-boundary, boundary not shown
    else:
        assert samples.count("Sample ") == 10
        assert all(180 <= len(block.split("\n```")[0]) <= 200 for block in samples.split("```text\n")[1:])


# --- parity, checked independently of training.export.parity --------------------------------------


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
@pytest.mark.parametrize("arch", ["bigram", "mlp", "wavenet"])
def test_window_parity(exported, arch, fmt):
    ckpt, model_dir, manifest = exported[arch]
    net = load_eager(ckpt)
    run = _runner(model_dir, fmt)
    rng = np.random.default_rng(1)
    for batch in (1, 7):
        idx = rng.integers(0, manifest.vocab_size, (batch, manifest.block_size), dtype=np.int64)
        (logits,) = run([idx])
        with torch.no_grad():
            want = net(torch.from_numpy(idx))[0].numpy()
        assert logits.shape == (batch, manifest.vocab_size) and logits.dtype == np.float32
        assert np.abs(logits - want).max() <= TOL
        if batch == 7:  # a batch-1 run matches the same row of the batch-7 run
            assert np.abs(run([idx[3:4]])[0][0] - logits[3]).max() <= TOL


def _step(run, m: Manifest, idx, pos, cache, width):
    """One v2 step on the first `width` cache columns; writes the new entries at each row's pos."""
    past = [c[..., :width] if j % 2 == 0 else c[:, :, :width] for j, c in enumerate(cache)]
    out = run([idx, pos, *(np.ascontiguousarray(p) for p in past)])
    batch, new = idx.shape
    assert out[0].shape == (batch, new, m.vocab_size)
    for j, t in enumerate(out[1:]):
        if j % 2 == 0:
            assert t.shape == (batch, m.n_head, m.head_dim, new)  # keys transposed
        else:
            assert t.shape == (batch, m.n_head, new, m.head_dim)
        for r in range(batch):
            n = min(new, m.block_size - int(pos[r]))
            if j % 2 == 0:
                cache[j][r, :, :, pos[r] : pos[r] + n] = t[r, :, :, :n]
            else:
                cache[j][r, :, pos[r] : pos[r] + n] = t[r, :, :n]
    return out[0]


def _garbage_cache(m: Manifest, batch: int, rng) -> list[np.ndarray]:
    key = (batch, m.n_head, m.head_dim, m.block_size)
    value = (batch, m.n_head, m.block_size, m.head_dim)
    return [rng.normal(0, 5, key if j % 2 == 0 else value).astype(np.float32) for j in range(2 * m.n_layer)]


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_gpt_decode_parity(exported, fmt):
    """Token-by-token decode at batch 1, prefill + decode at batch 7, through a fixed-capacity cache
    full of garbage, against the full-context eager logits (every new position of every step)."""
    ckpt, model_dir, m = exported["gpt"]
    net = load_eager(ckpt)
    run = _runner(model_dir, fmt)
    rng = np.random.default_rng(2)
    for batch, prefill in ((1, 1), (7, 5)):
        seq = rng.integers(0, m.vocab_size, (batch, m.block_size), dtype=np.int64)
        with torch.no_grad():
            full = net(torch.from_numpy(seq))[0].numpy()
        cache = _garbage_cache(m, batch, rng)
        past = 0
        while past < m.block_size:
            new = prefill if past == 0 else 1
            pos = np.full(batch, past, np.int64)
            logits = _step(run, m, seq[:, past : past + new], pos, cache, 0 if past == 0 else m.block_size)
            assert np.abs(logits - full[:, past : past + new]).max() <= TOL, (fmt, batch, past)
            past += new


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_gpt_mixed_positions(exported, fmt):
    """Rows at different positions share one call: a right-padded prefill of prompts of different
    lengths, then steps of 1 and 2 new tokens, each row equal to the eager forward and to itself alone."""
    ckpt, model_dir, m = exported["gpt"]
    net = load_eager(ckpt)
    run = _runner(model_dir, fmt)
    rng = np.random.default_rng(3)
    batch = 5
    seq = rng.integers(0, m.vocab_size, (batch, m.block_size), dtype=np.int64)
    with torch.no_grad():
        full = net(torch.from_numpy(seq))[0].numpy()
    cache = _garbage_cache(m, batch, rng)
    lens = np.array([1, 9, 4, m.block_size - 1, 6])
    idx = rng.integers(0, m.vocab_size, (batch, lens.max()), dtype=np.int64)  # padding: random tokens
    for r in range(batch):
        idx[r, : lens[r]] = seq[r, : lens[r]]
    logits = _step(run, m, idx, np.zeros(batch, np.int64), cache, 0)
    for r in range(batch):
        assert np.abs(logits[r, : lens[r]] - full[r, : lens[r]]).max() <= TOL, (fmt, r)
    pos = lens.copy()
    for new in (1, 2):
        real = np.minimum(new, m.block_size - pos)  # the row at block_size - 1 takes one real token
        idx = rng.integers(0, m.vocab_size, (batch, new), dtype=np.int64)
        for r in range(batch):
            idx[r, : real[r]] = seq[r, pos[r] : pos[r] + real[r]]
        alone = [[c[r : r + 1].copy() for c in cache] for r in range(batch)]
        logits = _step(run, m, idx, pos, cache, m.block_size)
        for r in range(batch):
            n = int(real[r])
            assert np.abs(logits[r, :n] - full[r, pos[r] : pos[r] + n]).max() <= TOL, (fmt, new, r)
            one = _step(run, m, idx[r : r + 1, :n], pos[r : r + 1], alone[r], m.block_size)
            assert np.abs(logits[r, :n] - one[0]).max() <= TOL, (fmt, new, r)
        pos = np.minimum(pos + real, m.block_size - 1)


def _runner(model_dir: Path, fmt: str):
    if fmt == "onnx":
        session = ort_session(model_dir / "model.onnx")
        names = [i.name for i in session.get_inputs()]
        return lambda arrays: session.run(None, dict(zip(names, arrays, strict=True)))
    module = ts_module(model_dir / "model.ts")

    def run(arrays):
        with torch.no_grad():
            return [t.numpy() for t in module(*(torch.from_numpy(a) for a in arrays))]

    return run


def test_onnx_graph_io_matches_contract(exported):
    for arch in ARCHS:
        session = ort_session(exported[arch][1] / "model.onnx")
        inputs = {i.name: i for i in session.get_inputs()}
        outputs = [o.name for o in session.get_outputs()]
        assert inputs["idx"].type == "tensor(int64)" and outputs[0] == "logits"
        if arch == "gpt":
            assert list(inputs) == ["idx", "pos", *past_names(2)]
            assert inputs["pos"].shape == [inputs["idx"].shape[0]]  # one position per row
            assert inputs["past_key_0"].shape[:3] == [inputs["idx"].shape[0], 2, 8]  # keys transposed
            assert isinstance(inputs["past_key_0"].shape[3], str)  # dynamic past
            assert inputs["past_value_0"].shape[3] == 8 and isinstance(inputs["past_value_0"].shape[2], str)
            assert outputs[1:] == new_kv_names(2) == ["new_key_0", "new_value_0", "new_key_1", "new_value_1"]
        else:
            assert list(inputs) == ["idx"] and inputs["idx"].shape[1] == exported[arch][2].block_size
        assert isinstance(inputs["idx"].shape[0], str)  # dynamic batch


def test_onnx_runs_without_torch(exported):
    """The service's path: onnxruntime + contract only; torch must never be imported."""
    script = """
import sys
from pathlib import Path
import numpy as np
import onnxruntime as ort
from contract import Manifest, key_shape, past_names, value_shape
for folder in sys.argv[1:]:
    m = Manifest.load(Path(folder))
    m.verify_files(Path(folder))
    session = ort.InferenceSession(str(Path(folder) / m.files["onnx"].path), providers=["CPUExecutionProvider"])
    if m.arch == "gpt":
        shapes = [key_shape(2, m.n_head, m.head_dim, 4), value_shape(2, m.n_head, m.head_dim, 4)]
        feeds = {"idx": np.zeros((2, 3), np.int64), "pos": np.array([4, 1], np.int64)}
        feeds.update({name: np.ones(shapes[j % 2], np.float32) for j, name in enumerate(past_names(m.n_layer))})
        want = (2, 3, m.vocab_size)
    else:
        feeds = {"idx": np.zeros((2, m.block_size), np.int64)}
        want = (2, m.vocab_size)
    logits = session.run(None, feeds)[0]
    assert logits.shape == want and np.isfinite(logits).all()
assert "torch" not in sys.modules, "torch was imported"
print("ok", len(sys.argv) - 1)
"""
    folders = [str(exported[arch][1]) for arch in ARCHS]
    result = subprocess.run(
        [sys.executable, "-c", script, *folders], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"ok {len(ARCHS)}"


# --- the exporter's own checks ----------------------------------------------------------------------


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


# --- shipped models ---------------------------------------------------------------------------------

SHIPPED = sorted(p for p in (REPO / "models").glob("*") if p.is_dir() and not p.name.startswith("."))


@pytest.mark.skipif(not SHIPPED, reason="no model folders under models/ yet")
@pytest.mark.parametrize("folder", SHIPPED, ids=[p.name for p in SHIPPED])
def test_shipped_models(folder):
    try:
        manifest = Manifest.load(folder)
        manifest.verify_files(folder)
    except ManifestError as exc:
        pytest.fail(str(exc))
    assert manifest.name == folder.name
    assert (folder / "README.md").is_file()
