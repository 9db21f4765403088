"""The hand-written fused GPT step and decode graphs (training/export/fused.py, fused_decode.py; the decode
graph's in-place cache contract, contract/graph.py) and the engine's IOBinding decode path."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from contract import cache_names, cache_shape, present_names
from training.export.fused import fused_step_model
from training.export.fused_decode import fused_decode_model
from training.nets import build

TOL = 1e-4


def _net(bias: bool):
    torch.manual_seed(7)
    net = build("gpt", {"vocab_size": 23, "block_size": 16, "n_layer": 2, "n_head": 4, "n_embd": 32, "bias": bias})
    with torch.no_grad():
        for p in net.parameters():  # random LayerNorm gains and biases too, so every weight is exercised
            p.add_(0.3 * torch.randn_like(p))
    return net.eval()


def _session(net, build=fused_step_model) -> ort.InferenceSession:
    weights = {k: v.numpy() for k, v in net.state_dict().items()}
    model = build(weights, net.cfg.n_layer, net.cfg.n_head, net.cfg.block_size)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def _feeds(net, idx: np.ndarray, pos: np.ndarray, past: list[np.ndarray]) -> dict:
    names = [f"past_{kind}_{i}" for i in range(net.cfg.n_layer) for kind in ("key", "value")]
    return {"idx": idx, "pos": pos, **dict(zip(names, past, strict=True))}


@pytest.mark.parametrize("bias", [True, False])
def test_fused_graph_matches_the_eager_step(bias):
    """Right-padded prefill, then decode at spread positions over a cache whose stale columns hold
    garbage: every output (logits and new keys/values) within 1e-4 of GPT.step."""
    net, rng = _net(bias), np.random.default_rng(0)
    session = _session(net)
    c = net.cfg
    batch, new, past_len = 5, 6, 9
    for pos, width in (
        (np.zeros(batch, np.int64), new),
        (np.array([9, 3, 0, 7, 1]), 1),
        (np.array([2, 5, 0, 4, 8]), 3),
    ):
        idx = rng.integers(0, c.vocab_size, (batch, width))
        past = [
            t.numpy() + 100.0 * rng.standard_normal(t.shape).astype(np.float32)
            for t in net.empty_cache(batch, past_len)
        ]
        with torch.no_grad():
            logits, new_kv = net.step(torch.from_numpy(idx), torch.from_numpy(pos), [torch.from_numpy(p) for p in past])
        got = session.run(None, _feeds(net, idx, pos, past))
        for want, have in zip([logits, *new_kv], got, strict=True):
            assert have.shape == tuple(want.shape)
            assert np.abs(have - want.numpy()).max() < TOL


def _decode_feeds(net, idx: np.ndarray, pos: np.ndarray, cache: list[np.ndarray]) -> dict:
    return {"idx": idx, "pos": pos, **dict(zip(cache_names(net.cfg.n_layer), cache, strict=True))}


def _decode_cache(net, pos: np.ndarray, columns: int, rng, garbage: float) -> list[np.ndarray]:
    """A cache [B, H, columns, D] of random entries before each row's pos and `garbage`-sized ones from it on."""
    c = net.cfg
    shape = cache_shape(len(pos), c.n_head, c.head_dim, columns)
    stale = np.arange(columns)[None, None, :, None] >= pos[:, None, None, None]
    return [
        (rng.standard_normal(shape) * np.where(stale, garbage, 1.0)).astype(np.float32) for _ in range(2 * c.n_layer)
    ]


@pytest.mark.parametrize("bias", [True, False])
def test_decode_graph_matches_the_eager_step(bias):
    """One new token per row at spread positions (0 with a one-column cache, a row at the last column, one
    past the position table) over caches whose columns from each row's pos on hold huge values: logits and
    the new column within 1e-4 of GPT.step, the columns before it equal to the cache's, and other
    garbage past pos changes nothing. (Without a binding, ONNX Runtime's present holds zeros past pos.)"""
    net, rng = _net(bias), np.random.default_rng(3)
    session = _session(net, fused_decode_model)
    c = net.cfg
    for pos, columns in ((np.zeros(4, np.int64), 1), (np.array([9, 3, 0, 15]), 16), (np.array([2, 5, 1, 16]), 17)):
        idx = rng.integers(0, c.vocab_size, (len(pos), 1))
        cache = _decode_cache(net, pos, columns, rng, garbage=1e4)
        past = [torch.from_numpy(t.swapaxes(2, 3).copy() if j % 2 == 0 else t) for j, t in enumerate(cache)]
        with torch.no_grad():
            logits, new_kv = net.step(torch.from_numpy(idx), torch.from_numpy(pos), past)  # v2: keys transposed
        got = session.run(None, _decode_feeds(net, idx, pos, cache))
        assert got[0].shape == tuple(logits.shape) and np.abs(got[0] - logits.numpy()).max() < TOL
        rows = np.arange(len(pos))
        for j, (before, present, new) in enumerate(zip(cache, got[1:], new_kv, strict=True)):
            assert present.shape == before.shape
            new = new.numpy()[..., 0] if j % 2 == 0 else new.numpy()[:, :, 0]  # [B, H, D]
            assert np.abs(present[rows, :, pos] - new).max() < TOL
            for r, p in enumerate(pos):  # the columns before pos as they were; those past it unspecified
                assert np.array_equal(present[r, :, :p], before[r, :, :p])
        live = np.arange(columns)[None, None, :, None] < pos[:, None, None, None]
        other = [np.where(live, t, u) for t, u in zip(cache, _decode_cache(net, pos, columns, rng, 1e4), strict=True)]
        again = session.run(None, _decode_feeds(net, idx, pos, other))
        assert np.array_equal(again[0], got[0])


def test_decode_graph_writes_the_bound_cache_in_place():
    """With each present output bound to its cache input's buffer (IOBinding), the graph writes row b's
    new key and value into the caller's arrays at column pos[b], and changes nothing else in them."""
    net, rng = _net(True), np.random.default_rng(5)
    session = _session(net, fused_decode_model)
    pos, idx = np.array([0, 7, 3, 11]), rng.integers(0, net.cfg.vocab_size, (4, 1))
    cache = _decode_cache(net, pos, 12, rng, garbage=1e4)
    before = [t.copy() for t in cache]
    want = session.run(None, _decode_feeds(net, idx, pos, before))  # the plain call: fresh present arrays
    binding = session.io_binding()
    binding.bind_cpu_input("idx", idx)
    binding.bind_cpu_input("pos", pos)
    binding.bind_output("logits")
    for name, out, t in zip(cache_names(net.cfg.n_layer), present_names(net.cfg.n_layer), cache, strict=True):
        value = ort.OrtValue.ortvalue_from_numpy(t)  # wraps t's memory, no copy
        binding.bind_ortvalue_input(name, value)
        binding.bind_ortvalue_output(out, value)
    session.run_with_iobinding(binding)
    assert np.array_equal(binding.copy_outputs_to_cpu()[0], want[0])
    rows = np.arange(len(pos))
    for t, old, present in zip(cache, before, want[1:], strict=True):
        assert np.array_equal(t[rows, :, pos], present[rows, :, pos])  # the new column, in the caller's array
        assert not np.array_equal(t[rows, :, pos], old[rows, :, pos])
        t[rows, :, pos] = old[rows, :, pos]
        assert np.array_equal(t, old)  # nothing else written


def test_decode_graph_has_no_layout_glue():
    ops = [n.op_type for n in fused_decode_model(
        {k: v.numpy() for k, v in _net(True).state_dict().items()}, 2, 4, 16).graph.node]  # fmt: skip
    assert not {"Transpose", "Trilu", "Slice", "Concat", "ScatterND", "Softmax", "Where"} & set(ops)
    assert ops.count("GroupQueryAttention") == 2  # attention and the in-place cache write, one kernel a layer
    assert ops.count("LayerNormalization") == 2 * 2 + 1 and ops.count("BiasGelu") == 2
    assert "SkipLayerNormalization" not in ops


def test_fused_graph_uses_the_fused_kernels():
    ops = [n.op_type for n in fused_step_model(
        {k: v.numpy() for k, v in _net(True).state_dict().items()}, 2, 4, 16).graph.node]  # fmt: skip
    assert ops.count("LayerNormalization") == 2 * 2 + 1 and ops.count("BiasGelu") == 2
    assert "SkipLayerNormalization" not in ops
    assert "Erf" not in ops and "Div" not in ops  # GELU and the attention scale are not spelled out


@pytest.mark.parametrize("build_graph", [fused_step_model, fused_decode_model])
def test_onnx_runtime_keeps_the_layer_norms_unfused(build_graph, tmp_path):
    """The graphs spell each residual as Add, Add, LayerNormalization because ONNX Runtime's CPU
    SkipLayerNormalization is the slow kernel (training/export/fused.py): its optimiser, at the level the
    engine runs it, must not fuse them back (the sum feeds the next residual too, which it leaves be)."""
    weights = {k: v.numpy() for k, v in _net(True).state_dict().items()}
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(build_graph(weights, 2, 4, 16).SerializeToString(), opts, providers=["CPUExecutionProvider"])
    ops = [n.op_type for n in onnx.load(opts.optimized_model_filepath).graph.node]
    assert "SkipLayerNormalization" not in ops and ops.count("LayerNormalization") == 2 * 2 + 1
