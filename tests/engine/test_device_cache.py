"""The cache on the backend's device (engine/arrays.py): the same KV cache, runner and IOBinding over torch
tensors as over numpy, so that on CUDA the cache never leaves the GPU.

Without a GPU the device path's code runs over torch CPU tensors (everything but the device string is
the same code); the tests marked `gpu` run it on CUDA and are skipped where there is none."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch

from contract.repository import scan_repository
from engine import Engine, Generator, SamplingParams
from engine.arrays import HOST, TorchArrays
from engine.backends import OnnxBackend
from engine.kv import BUCKET, FEW_ROWS, KVCache
from tests.support.engine_fixtures import texts_of

SHIPPED = Path(__file__).resolve().parents[2] / "models"
CUDA = torch.cuda.is_available() and "CUDAExecutionProvider" in onnxruntime.get_available_providers()
gpu = pytest.mark.gpu
needs_cuda = pytest.mark.skipif(not CUDA, reason="no CUDA GPU here (torch and onnxruntime-gpu)")


def _host(a) -> np.ndarray:
    return a.numpy() if isinstance(a, torch.Tensor) else a


@pytest.mark.parametrize("in_place", [False, True])
def test_a_torch_cache_holds_what_the_numpy_cache_holds(in_place):
    """Prefill writes (host arrays in, as ONNX Runtime gives them), decode writes of few and many rows
    (torch tensors in, as TorchScript gives them), moves, and re-layouts wider and narrower: a torch
    cache ends equal to a numpy cache fed the same, and both to a cache laid out once at full width
    (never re-laid out) in the columns they keep."""
    rng = np.random.default_rng(3)
    slots, n_layer, h, d, block = 12, 2, 2, 4, 3 * BUCKET
    host = KVCache(slots, n_layer, h, d, block, in_place=in_place)
    dev = KVCache(slots, n_layer, h, d, block, in_place=in_place, arrays=TorchArrays("cpu"))
    full = KVCache(slots, n_layer, h, d, block, in_place=in_place)
    full.fit(block, 0)
    assert isinstance(dev.layers[0], torch.Tensor) and host.arrays is HOST

    def both(method, *args, tensors=False):
        if method != "fit":
            getattr(full, method)(*args)
        getattr(host, method)(*args)
        as_given = [[torch.from_numpy(t) for t in a] if tensors and isinstance(a, list) else a for a in args]
        getattr(dev, method)(*as_given)

    def new_kv(rows: int, new: int) -> list[np.ndarray]:
        shapes = [(rows, h, d, new), (rows, h, new, d)] * n_layer  # the step graph's layout: keys transposed
        return [rng.standard_normal(s).astype(np.float32) for s in shapes]

    both("fit", 20, 0)
    both("write", np.arange(slots), 0, new_kv(slots, 20))
    for width in (21, 40, 70):  # crosses buckets: the live rows are laid out again, wider
        both("fit", width, slots)
        for rows in (np.array([1, 5]), np.arange(FEW_ROWS + 3)):
            start = rng.integers(0, width, len(rows))
            both("write", rows, start, new_kv(len(rows), 1), tensors=True)
    both("move", 9, 2)
    both("fit", 10, 8)  # narrower: rows [0, 8) keep their first columns
    assert host.columns == dev.columns == BUCKET
    for j, (a, b, ref) in enumerate(zip(host.layers, dev.layers, full.layers, strict=True)):
        np.testing.assert_array_equal(a[:8], _host(b)[:8])
        kept = ref[:8, :, :, :BUCKET] if j % 2 == 0 and not in_place else ref[:8, :, :BUCKET, :]
        np.testing.assert_array_equal(a[:8], kept)


def _engine_texts(engine: Engine, prompts: list[str], params: list[SamplingParams]) -> list[tuple[str, str]]:
    return texts_of(Generator(engine).generate(prompts, params))


CASES = {  # rows join and leave at different steps, greedy and seeded, top-k / top-p
    "names-gpt": (["", "li", "abcdefghij", "e", "zz", "mar"], [4, 30, 12, 30, 1, 20]),
    "stream-gpt": (["", "to be", "A", "o", "the ", "Be"], [40, 3, 25, 40, 17, 9]),  # past block_size: re-prefills
}


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("decode_graph", [True, False])
def test_onnx_over_a_torch_cache_gives_the_host_engine_s_texts(fixtures, name, decode_graph):
    """The device path's binding (torch tensors bound by address, idx / pos in bound buffers, new keys
    and values written by torch) over torch CPU tensors: the same texts as the host cache, with the
    in-place decode graph and with the step graph, as rows join, leave and slide."""
    entry = fixtures[name][0]
    m = entry.manifest if decode_graph else entry.manifest.model_copy(update={"onnx_decode": None})
    path = entry.folder / entry.manifest.files["onnx"].path
    prompts, lengths = CASES[name]
    params = [SamplingParams(temperature=0, max_new_tokens=n) for n in lengths]
    params += [SamplingParams(seed=i, top_k=5, top_p=0.9, max_new_tokens=n) for i, n in enumerate(lengths)]
    prompts = prompts * 2
    host = Engine.from_backend(m, OnnxBackend(path, m), slots=4)
    dev = Engine.from_backend(m, OnnxBackend(path, m, arrays=TorchArrays("cpu")), slots=4)
    assert isinstance(dev.runner.kv.layers[0], torch.Tensor) and dev.runner.in_place == decode_graph
    assert _engine_texts(dev, prompts, params) == _engine_texts(host, prompts, params)


def test_torchscript_over_a_torch_cache_gives_the_onnx_engine_s_texts(fixtures, gens):
    """TorchScript as on a GPU (its cache in torch tensors, the new keys and values left as the module
    made them) and as on the CPU (numpy): both give the ONNX engine's texts."""
    from engine.backends import TorchScriptBackend

    entry = fixtures["names-gpt"][0]
    m, path = entry.manifest, entry.folder / entry.manifest.files["torchscript"].path
    prompts, lengths = CASES["names-gpt"]
    params = [SamplingParams(seed=i, max_new_tokens=n) for i, n in enumerate(lengths)]
    want = texts_of(gens["names-gpt"].generate(prompts, params))
    for arrays in (TorchArrays("cpu"), None):
        engine = Engine.from_backend(m, TorchScriptBackend(path, m, arrays=arrays), slots=3)
        assert isinstance(engine.runner.kv.layers[0], torch.Tensor) == (arrays is not None)
        assert _engine_texts(engine, prompts, params) == want


def test_shipped_gpt_over_a_torch_cache_crosses_buckets_like_the_host_one():
    """shakespeare-gpt's block of 128 columns: rows grow past two cache buckets and slide past the block,
    so the torch cache is laid out again as the host one is."""
    entry = scan_repository(SHIPPED).models["shakespeare-gpt"]
    m, path = entry.manifest, entry.folder / entry.manifest.files["onnx"].path
    prompts = ["\n", "ROMEO:", "To be, or not", "First Citizen:\nBefore we proceed"]
    params = [SamplingParams(seed=i, max_new_tokens=n) for i, n in enumerate((150, 70, 40, 100))]
    host = Engine.from_backend(m, OnnxBackend(path, m), slots=4)
    dev = Engine.from_backend(m, OnnxBackend(path, m, arrays=TorchArrays("cpu")), slots=4)
    assert _engine_texts(dev, prompts, params) == _engine_texts(host, prompts, params)


@gpu
@needs_cuda
@pytest.mark.parametrize("backend", ["onnx", "torchscript"])
def test_on_cuda_the_cache_stays_on_the_gpu_and_the_texts_are_the_cpu_s(fixtures, gens, backend):
    entry = fixtures["names-gpt"][0]
    gen = Generator.load(entry, backend=backend, device="cuda", slots=3)
    kv = gen.engine.runner.kv
    assert all(a.device.type == "cuda" for a in kv.layers)
    prompts, lengths = CASES["names-gpt"]
    params = [SamplingParams(temperature=0, max_new_tokens=n) for n in lengths]
    assert texts_of(gen.generate(prompts, params)) == texts_of(gens["names-gpt"].generate(prompts, params))
    if backend == "onnx":  # the decode steps' binding: idx, pos and the outputs in device buffers too
        bound = getattr(gen.engine.runner.backend._local, "bound", None)
        assert bound is not None and all(a.device.type == "cuda" for a in [*bound[2], *bound[3]])


@gpu
@needs_cuda
def test_shipped_gpt_on_cuda_gives_the_cpu_s_greedy_text():
    entry = scan_repository(SHIPPED).models["shakespeare-gpt"]
    prompts = ["\n", "ROMEO:", "To be, or not"]
    params = [SamplingParams(temperature=0, max_new_tokens=n) for n in (40, 40, 40)]
    cpu = Generator.load(entry, slots=3).generate(prompts, params)
    for backend in ("onnx", "torchscript"):
        cuda = Generator.load(entry, backend=backend, device="cuda", slots=3).generate(prompts, params)
        assert texts_of(cuda) == texts_of(cpu), backend
