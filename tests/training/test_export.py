"""training.export: tiny random models of every family -> model folders that validate and match eager.

Parity is checked twice: by the exporter itself (training.export.parity, at every export) and here,
independently, by loading the files as a consumer would (onnxruntime / torch.jit.load).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from contract import Manifest, ManifestError, new_kv_names, past_names
from tests.support.exports import (
    ARCHS,
    MODELS,
    REPO,
    TOL,
    load_eager,
    ort_session,
    ts_module,
)
from training.nets import n_params

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
    # exactly these files (a GPT's decode graph too), and nothing of the staging folder left behind
    decode = ["model.decode.onnx"] if arch == "gpt" else []
    assert (loaded.onnx_decode is not None) == (arch == "gpt")
    assert sorted(p.name for p in model_dir.iterdir()) == sorted(
        ["README.md", "manifest.json", "model.onnx", "model.safetensors", "model.ts", *decode]
    )
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
