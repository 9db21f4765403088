"""The ONNX backend's decode path (engine/backends.py run_decode): the in-place decode graph bound over the
engine's own cache, the step graph's IOBinding where a folder has no decode graph, and the engine's texts
through either."""

from __future__ import annotations

import shutil
import threading

import numpy as np
import pytest

from contract import cache_shape, key_shape, value_shape
from engine import Engine, Generator, SamplingParams
from engine.backends import OnnxBackend
from engine.types import EngineError

TOL = 1e-4


def _backends(fixtures, name: str = "names-gpt"):
    """(in-place backend, step-graph-only backend, manifest) of an exported GPT fixture."""
    entry = fixtures[name][0]
    m, path = entry.manifest, entry.folder / entry.manifest.files["onnx"].path
    assert m.onnx_decode is not None  # the exporter writes a decode graph for every GPT ...
    assert m.onnx_decode.bytes * 10 < m.files["onnx"].bytes  # ... reading its weights out of model.onnx
    return OnnxBackend(path, m), OnnxBackend(path, m.model_copy(update={"onnx_decode": None})), m


def _case(m, batch: int, columns: int, rng) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """idx, pos and an in-place cache of finite garbage (large values: any column past a row's pos
    that reached a result would show)."""
    h, d = m.n_head, m.head_dim
    cache = [
        100.0 * rng.standard_normal(cache_shape(batch, h, d, columns)).astype(np.float32) for _ in range(2 * m.n_layer)
    ]
    return rng.integers(1, m.vocab_size, (batch, 1)), rng.integers(0, columns, batch), cache


def _step_graph_view(pos: np.ndarray, cache: list[np.ndarray]) -> list[np.ndarray]:
    """The same cache as the step graph takes it: keys transposed, `max(pos)` columns."""
    width = int(pos.max())
    return [
        np.ascontiguousarray(a[:, :, :width, :].transpose(0, 1, 3, 2) if j % 2 == 0 else a[:, :, :width, :])
        for j, a in enumerate(cache)
    ]


def test_in_place_decode_writes_one_column_and_matches_the_step_graph(fixtures):
    """Bound over the caller's cache, the decode graph gives the step graph's logits (within 1e-4) and
    writes each row's new key and value at column pos[b] of that same memory, the step graph's new_kv,
    leaving every other column as it was; the binding follows new contents, idx and pos."""
    in_place, step, m = _backends(fixtures)
    assert in_place.decode_in_place and not step.decode_in_place
    rng = np.random.default_rng(1)
    idx, pos, cache = _case(m, 5, 8, rng)
    pos[:2] = (0, 7)  # an empty row and a row at the last column
    for turn in range(3):
        before = [a.copy() for a in cache]
        want = step.run([idx, pos, *_step_graph_view(pos, before)])
        got = in_place.run_decode([idx, pos, *cache], "views")
        assert got[0].shape == want[0].shape and np.abs(got[0] - want[0]).max() < TOL, turn
        rows = np.arange(len(pos))
        for j, (a, b, new) in enumerate(zip(cache, before, want[1:], strict=True)):
            column = new[:, :, :, 0] if j % 2 == 0 else new[:, :, 0, :]
            assert np.abs(a[rows, :, pos, :] - column).max() < TOL, turn
            a[rows, :, pos, :] = b[rows, :, pos, :]
            assert np.array_equal(a, b), turn  # nothing else in the cache moved
        for a in cache:  # new contents in the same buffers, as the engine's cache changes
            a[...] = 100.0 * rng.standard_normal(a.shape).astype(np.float32)
        idx, pos = rng.integers(1, m.vocab_size, (5, 1)), rng.integers(1, 8, 5)


def test_step_graph_binding_equals_the_plain_call(fixtures):
    """Without a decode graph, run_decode binds the step graph once the caller names the same views
    twice in a row: same outputs as `run`, before and after, and it rebinds when the views change."""
    _, step, m = _backends(fixtures)
    rng = np.random.default_rng(2)
    h, d = m.n_head, m.head_dim
    for batch, columns in ((3, 8), (5, 8), (5, 4), (1, 8)):  # rows join, the cache narrows, rows leave
        past = [
            rng.standard_normal(
                key_shape(batch, h, d, columns) if j % 2 == 0 else value_shape(batch, h, d, columns)
            ).astype(np.float32)
            for j in range(2 * m.n_layer)
        ]
        inputs = [rng.integers(1, m.vocab_size, (batch, 1)), rng.integers(0, columns + 1, batch), *past]
        want = step.run(inputs)
        for _ in range(3):  # plain the first time a batch is seen, bound from the second
            got = step.run_decode(inputs, (batch, columns))
            assert all(np.array_equal(w, g) for w, g in zip(want, got, strict=True))
    assert step.run_decode(inputs, (1, 8)) is step.run_decode(inputs, (1, 8))  # bound outputs


def test_each_thread_binds_its_own_rows(fixtures):
    """The engine runs spans of rows on two threads at once, each over its own rows of one cache."""
    in_place, step, m = _backends(fixtures)
    rng = np.random.default_rng(3)
    idx, pos, cache = _case(m, 6, 8, rng)
    spans = [(0, 2), (2, 6)]
    want = [
        step.run([idx[lo:hi], pos[lo:hi], *_step_graph_view(pos[lo:hi], [a[lo:hi] for a in cache])]) for lo, hi in spans
    ]
    got: dict[int, list[np.ndarray]] = {}

    def loop(k: int) -> None:
        lo, hi = spans[k]
        for _ in range(20):  # the same column rewritten with the same values: the logits stay put
            got[k] = [a.copy() for a in in_place.run_decode([idx[lo:hi], pos[lo:hi], *[a[lo:hi] for a in cache]], k)]

    threads = [threading.Thread(target=loop, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for k in range(2):
        assert np.abs(got[k][0] - want[k][0]).max() < TOL


def test_engine_texts_are_the_same_through_either_decode(fixtures):
    """Greedy and seeded sequences of spread prompt lengths, joining and leaving, sliding past
    block_size, on one and two threads: the in-place decode graph gives the step graph's texts."""
    entry = fixtures["names-gpt"][0]
    m = entry.manifest
    rng = np.random.default_rng(4)
    letters = [c for c in m.vocab if c.isalpha()]
    prompts = ["".join(rng.choice(letters, int(rng.integers(0, 8)))) for _ in range(12)]
    params = [
        SamplingParams(
            temperature=0.0 if i % 2 else 1.0,
            seed=i,
            max_new_tokens=int(rng.integers(3, 3 * m.block_size)),
            ignore_eos=i % 3 == 0,
        )
        for i in range(12)
    ]
    texts = {}
    for threads in (1, 2):
        for in_place, step_only in ((True, False), (False, True)):
            spec = m.model_copy(update={"onnx_decode": None}) if step_only else m
            backend = OnnxBackend(entry.folder / m.files["onnx"].path, spec)
            assert backend.decode_in_place == in_place
            engine = Engine.from_backend(spec, backend, threads=threads, slots=4)
            texts[threads, in_place] = [c.text for c in Generator(engine).generate(prompts, params)]
    assert len({tuple(t) for t in texts.values()}) == 1
    assert any(len(t) > m.block_size for t in texts[1, True])  # some sequence slid


def test_a_decode_graph_of_the_old_contract_or_no_graph_is_refused(fixtures, tmp_path):
    """A decode graph with the step graph's I/O (the exporter's earlier one) is refused at load with
    the command that re-exports it; a listed file that is no graph, naming the file."""
    entry = fixtures["names-gpt"][0]
    m = entry.manifest
    shutil.copy(entry.folder / "model.onnx", tmp_path / "model.onnx")
    shutil.copy(entry.folder / "model.onnx", tmp_path / m.onnx_decode.path)
    with pytest.raises(EngineError, match=r"step graph's contract.*training upgrade"):
        OnnxBackend(tmp_path / "model.onnx", m)
    (tmp_path / m.onnx_decode.path).write_bytes(b"not a graph")
    with pytest.raises(EngineError, match=r"model\.decode\.onnx: onnxruntime cannot load it"):
        OnnxBackend(tmp_path / "model.onnx", m)
