"""Run one exported graph: ONNX Runtime (no torch anywhere) or TorchScript (torch, imported lazily), or
the eager net itself (`TorchEagerBackend`: training's sampling and model cards decode through the engine).

All take the graph's inputs positionally (idx[, pos, past_key_0, past_value_0, ...]) and return its
outputs (logits[, new_key_0, new_value_0, ...]), see contract/graph.py: idx, pos and logits are numpy
arrays; the cache's arrays are the backend's `arrays` (engine/arrays.py: numpy on the host, torch
tensors on a device), in and out, so a GPU's cache stays on the GPU. Each call runs on the calling
thread alone (one intra-op thread); `run` may be called from several threads at once, which is how the
engine uses more than one core (rows split across calls, see engine.py).
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import Literal, Protocol

import numpy as np

from contract import IDX, LOGITS, POS, Manifest, cache_names, family, new_kv_names, past_names, present_names
from engine.arrays import HOST, HostArrays, TorchArrays
from engine.types import BackendUnavailable, EngineError

BackendName = Literal["onnx", "torchscript"]
Device = Literal["cpu", "cuda"]

# Intra-op threads lose on these tiny ops (thread sync; torch stalls when another process holds a core):
# every graph call gets one thread, and more cores split the rows across concurrent calls (docs/engine.md).
INTRA_OP_THREADS = 1


class Backend(Protocol):
    name: str
    device: str
    arrays: HostArrays | TorchArrays  # where the engine keeps the cache this backend reads

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Inputs in graph order -> outputs in graph order, all numpy."""
        ...


def graph_io(manifest: Manifest) -> tuple[list[str], list[str]]:
    """The input and output names the contract promises for this model."""
    if family(manifest.arch).kv_cache:
        n_layer = manifest.n_layer or 0
        return [IDX, POS, *past_names(n_layer)], [LOGITS, *new_kv_names(n_layer)]
    return [IDX], [LOGITS]


class OnnxBackend:
    """An ONNX Runtime session: explicit thread counts, sequential execution, all graph optimisations.

    The cache lives in host memory on the CPU and in torch CUDA tensors on CUDA (bound by address, so a
    decode step copies only idx and pos in and the logits out); `arrays` overrides that choice (tests
    run the device path's code over torch CPU tensors)."""

    name = "onnx"

    def __init__(
        self, path: Path, manifest: Manifest, device: Device = "cpu", arrays: HostArrays | TorchArrays | None = None
    ):
        try:
            import onnxruntime as ort
        except ImportError:
            raise BackendUnavailable("the onnx backend needs onnxruntime: pip install charlm[serve]") from None
        providers: list = ["CPUExecutionProvider"]
        if device == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise BackendUnavailable(
                    "device cuda: this onnxruntime has no CUDAExecutionProvider (pip install onnxruntime-gpu)"
                )
            # full float32 (no TF32 tensor-core rounding), so the GPU decodes as the CPU does (decode parity)
            providers.insert(0, ("CUDAExecutionProvider", {"use_tf32": "0"}))
        elif device != "cpu":
            raise BackendUnavailable(f"unknown device {device!r} (cpu or cuda)")
        self.device = device
        self.arrays = arrays or (HOST if device == "cpu" else TorchArrays(device))
        self._inputs, self._outputs = graph_io(manifest)
        self._vocab = manifest.vocab_size
        self._local = threading.local()  # run_decode's binding, one per calling thread
        self._session = self._open(ort, path, providers, self._inputs, self._outputs)
        # GPT: the decode graph (training/export/fused_decode.py) runs the decode steps over a cache it
        # updates in place, the step graph the rest; without one, or on CUDA (ORT registers its CUDA
        # GroupQueryAttention for half precision only, and no GPU has run this path), the step graph
        # decodes too, IOBinding kept.
        decode = manifest.onnx_decode if device == "cpu" else None
        self.decode_in_place = decode is not None
        self._decode = self._session
        if decode is not None:
            n_layer = manifest.n_layer or 0
            io = [IDX, POS, *cache_names(n_layer)], [LOGITS, *present_names(n_layer)]
            self._decode = self._open(ort, path.parent / decode.path, providers, *io, decode=True)

    def _open(self, ort, path: Path, providers: list, inputs: list[str], outputs: list[str], decode: bool = False):
        """A session of the graph at `path`, its I/O names checked against the contract's (`decode`: the
        decode graph, whose earlier contract, the step graph's, gets its own message)."""
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = INTRA_OP_THREADS
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3  # errors only: no per-session banner in the server log
        try:
            session = ort.InferenceSession(str(path), sess_options=opts, providers=providers)
        except Exception as exc:  # onnxruntime raises its own, unexported exception types
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise EngineError(f"{path}: onnxruntime cannot load it: {first}") from None
        got_in = [i.name for i in session.get_inputs()]
        got_out = [o.name for o in session.get_outputs()]
        if decode and sorted(got_in) == sorted(self._inputs):
            raise EngineError(
                f"{path}: a decode graph of the step graph's contract (an earlier export); rewrite it from "
                f"the folder's weights: python -m training upgrade {path.parent}"
            )
        if sorted(got_in) != sorted(inputs) or not set(outputs) <= set(got_out):
            raise EngineError(
                f"{path}: graph inputs {got_in} / outputs {got_out} do not follow the contract "
                f"(want {inputs} -> {outputs})"
            )
        return session

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        """The step graph (contract v2), any number of new tokens."""
        return self._session.run(self._outputs, dict(zip(self._inputs, inputs, strict=True)))

    def run_decode(self, inputs: Sequence[np.ndarray], views: Hashable) -> list[np.ndarray]:
        """A GPT decode step (one new token per row) through an IOBinding kept per thread. `views` names
        the cache views the caller passes: equal names promise the same arrays (addresses and shapes),
        so they are bound by address once, the outputs written into arrays bound once, and idx and pos
        copied into buffers bound once, for as long as the thread's batch stays the same.

        `decode_in_place`: the caches are [B, H, columns, D] views (contract/graph.py, decode graph),
        bound as both input and output, so the graph writes each row's new key and value into them;
        returns [logits]. Otherwise the step graph's contract: returns [logits, *new_kv] for the caller
        to store; there, over host arrays, a bind costs about a plain call's overhead, so a batch is
        bound the second time in a row it is seen and runs plain until then (a device cache is always
        bound: a plain call takes host arrays). The outputs are valid until this thread's next
        run_decode."""
        local, arrays = self._local, self.arrays
        bound = getattr(local, "bound", None)
        if bound is None or bound[0] != views:
            if not self.decode_in_place and arrays is HOST and getattr(local, "seen", None) != views:
                local.seen = views
                return self.run(inputs)
            bound = local.bound = (views, *self._bind(inputs))
        _, binding, ids, outputs = bound
        arrays.fill(ids[0], inputs[0])
        arrays.fill(ids[1], inputs[1])
        arrays.sync()  # the cache's writes and these copies are done before ONNX Runtime's stream reads them
        self._decode.run_with_iobinding(binding)
        if arrays is HOST:
            return outputs
        binding.synchronize_outputs()
        return [arrays.host(outputs[0]), *outputs[1:]]

    def _bind(self, inputs: Sequence[np.ndarray]) -> tuple[object, list, list]:
        """A binding of these inputs' arrays, with buffers of the bound arrays' kind (engine/arrays.py)
        for idx and pos (filled at every call: a host buffer bound to a device is copied only once,
        when bound) and for the outputs."""
        arrays, binding = self.arrays, self._decode.io_binding()
        ids = [arrays.take(np.array(inputs[0])), arrays.take(np.array(inputs[1]))]  # own buffers
        past = inputs[2:]
        names = [IDX, POS, *cache_names(len(past) // 2)] if self.decode_in_place else self._inputs
        where = (arrays.device_type, arrays.device_id)
        for i, (name, a) in enumerate(zip(names, [*ids, *past], strict=True)):
            binding.bind_input(name, *where, np.int64 if i < 2 else np.float32, list(a.shape), arrays.address(a))
        batch, n_head = past[0].shape[:2]
        outputs = [arrays.empty((batch, 1, self._vocab))]
        if self.decode_in_place:  # present_i is cache_i itself
            out_names, targets = [LOGITS, *present_names(len(past) // 2)], [*outputs, *past]
        else:
            head_dim = past[1].shape[3]
            outputs += [
                arrays.empty((batch, n_head, head_dim, 1) if j % 2 == 0 else (batch, n_head, 1, head_dim))
                for j in range(len(past))
            ]
            out_names, targets = self._outputs, outputs
        for name, a in zip(out_names, targets, strict=True):
            binding.bind_output(name, *where, np.float32, list(a.shape), arrays.address(a))
        return binding, ids, outputs


class TorchScriptBackend:
    """A TorchScript module; torch is imported here only, so the ONNX path never loads it."""

    name = "torchscript"

    def __init__(
        self, path: Path, manifest: Manifest, device: Device = "cpu", arrays: HostArrays | TorchArrays | None = None
    ):
        try:
            import torch
        except ImportError:
            raise BackendUnavailable("the torchscript backend needs torch: pip install charlm[torch]") from None
        if device == "cuda" and not torch.cuda.is_available():
            raise BackendUnavailable("device cuda: torch sees no CUDA GPU")
        if device not in ("cpu", "cuda"):
            raise BackendUnavailable(f"unknown device {device!r} (cpu or cuda)")
        self._torch = torch
        # torch's pool is process-wide; every call gets one thread (see INTRA_OP_THREADS).
        torch.set_num_threads(INTRA_OP_THREADS)
        try:
            with warnings.catch_warnings():  # torch 2.13 deprecates torch.jit; the file format is still ours
                warnings.simplefilter("ignore", DeprecationWarning)
                self._module = torch.jit.load(str(path), map_location=device).eval()
        except Exception as exc:  # torch.jit raises RuntimeError and friends with multi-line text
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise EngineError(f"{path}: torch.jit cannot load it: {first}") from None
        self.device = device
        # The cache: torch tensors on a GPU; numpy on the CPU, where torch reads it without a copy and
        # numpy writes a step's new column for a fraction of what torch's indexing costs per call.
        self._tensors = TorchArrays(device)
        self.arrays = arrays or (HOST if device == "cpu" else self._tensors)
        self._n_outputs = len(graph_io(manifest)[1])

    def run(self, inputs: Sequence) -> list:
        """Host inputs go to the module's device, the cache's tensors are read where they are; the new
        keys and values come back in the cache's kind of array (on a GPU they stay there), the logits
        to the host."""
        torch, tensors = self._torch, self._tensors
        with torch.inference_mode():
            out = self._module(*[tensors.take(a) for a in inputs])
        if isinstance(out, torch.Tensor):
            out = (out,)
        if len(out) != self._n_outputs:
            raise EngineError(f"torchscript module returned {len(out)} outputs, the contract says {self._n_outputs}")
        new_kv = [t.numpy() for t in out[1:]] if self.arrays is HOST else list(out[1:])
        return [tensors.host(out[0]), *new_kv]


class TorchEagerBackend:
    """The eager PyTorch net behind the same graph contract v2, so `training sample`, the model cards
    and the server decode by one set of rules (the engine's). GPT: `net.step(idx, pos, past)` ->
    `(logits, *new_kv)`; window nets: `net(idx)[0]`. torch is imported here only; the torch thread
    count is left to the caller (training sets its own)."""

    name = "torch"

    def __init__(self, net, manifest: Manifest, device: str = "cpu"):
        try:
            import torch
        except ImportError:
            raise BackendUnavailable("the torch backend needs torch: pip install charlm[torch]") from None
        self._torch = torch
        self.device = device
        self.arrays = HOST  # training's sampling: the cache in host memory, handed to the net as it is
        self._net = net.to(device).eval()
        self._step = family(manifest.arch).kv_cache
        self._n_outputs = len(graph_io(manifest)[1])

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        torch = self._torch
        with torch.inference_mode():
            args = [torch.from_numpy(np.ascontiguousarray(a)).to(self.device) for a in inputs]
            if self._step:
                logits, new_kv = self._net.step(args[0], args[1], args[2:])
                out = [logits, *new_kv]
            else:
                out = [self._net(args[0])[0]]
        if len(out) != self._n_outputs:
            raise EngineError(f"the eager net returned {len(out)} outputs, the contract says {self._n_outputs}")
        return [t.float().cpu().numpy() for t in out]


def load_backend(path: Path, manifest: Manifest, backend: BackendName, device: Device) -> Backend:
    if backend == "onnx":
        return OnnxBackend(path, manifest, device)
    if backend == "torchscript":
        return TorchScriptBackend(path, manifest, device)
    raise BackendUnavailable(f"unknown backend {backend!r} (onnx or torchscript)")
