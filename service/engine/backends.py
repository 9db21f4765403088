"""Run one exported graph: ONNX Runtime (no torch anywhere) or TorchScript (torch, imported lazily).

Both take the graph's inputs positionally as numpy arrays (idx[, pos, past_key_0, past_value_0, ...])
and return numpy arrays (logits[, present_key_0, present_value_0, ...]), see contract/graph.py.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Literal, Protocol

import numpy as np

from contract import IDX, LOGITS, POS, Manifest, past_names, present_names
from service.engine.types import BackendUnavailable, EngineError

BackendName = Literal["onnx", "torchscript"]
Device = Literal["cpu", "cuda"]

# Measured with shakespeare-gpt (6 layers, 128 wide, block 128) on the shared 2-core dev box, 256 new
# tokens, Generator.generate tokens/s, threads 1 vs 2: batch 1: 1629 vs 780; batch 8: 5178 vs 5661;
# batch 32: 5631 vs 6336 (under heavier background load 2 threads lost at every batch size: 5711 vs
# 2745 at batch 32). One thread is 2x faster at batch 1 (time to first token), at most ~10% slower at
# batch 32, and leaves the other core to the HTTP server and other workers; `threads` raises it.
DEFAULT_THREADS = 1


class Backend(Protocol):
    name: str
    device: str

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Inputs in graph order -> outputs in graph order, all numpy."""
        ...


def graph_io(manifest: Manifest) -> tuple[list[str], list[str]]:
    """The input and output names the contract promises for this model."""
    if manifest.arch == "gpt":
        n_layer = manifest.n_layer or 0
        return [IDX, POS, *past_names(n_layer)], [LOGITS, *present_names(n_layer)]
    return [IDX], [LOGITS]


class OnnxBackend:
    """An ONNX Runtime session: explicit thread counts, sequential execution, all graph optimisations."""

    name = "onnx"

    def __init__(self, path: Path, manifest: Manifest, device: Device = "cpu", threads: int = DEFAULT_THREADS):
        try:
            import onnxruntime as ort
        except ImportError:
            raise BackendUnavailable("the onnx backend needs onnxruntime: pip install charlm[serve]") from None
        providers = ["CPUExecutionProvider"]
        if device == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise BackendUnavailable(
                    "device cuda: this onnxruntime has no CUDAExecutionProvider (pip install onnxruntime-gpu)"
                )
            providers.insert(0, "CUDAExecutionProvider")
        elif device != "cpu":
            raise BackendUnavailable(f"unknown device {device!r} (cpu or cuda)")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3  # errors only: no per-session banner in the server log
        try:
            self._session = ort.InferenceSession(str(path), sess_options=opts, providers=providers)
        except Exception as exc:  # onnxruntime raises its own, unexported exception types
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise EngineError(f"{path}: onnxruntime cannot load it: {first}") from None
        self.device = device
        self._inputs, self._outputs = graph_io(manifest)
        got_in = [i.name for i in self._session.get_inputs()]
        got_out = [o.name for o in self._session.get_outputs()]
        if sorted(got_in) != sorted(self._inputs) or not set(self._outputs) <= set(got_out):
            raise EngineError(
                f"{path}: graph inputs {got_in} / outputs {got_out} do not follow the contract "
                f"(want {self._inputs} -> {self._outputs})"
            )

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        return self._session.run(self._outputs, dict(zip(self._inputs, inputs, strict=True)))


class TorchScriptBackend:
    """A TorchScript module; torch is imported here only, so the ONNX path never loads it."""

    name = "torchscript"

    def __init__(self, path: Path, manifest: Manifest, device: Device = "cpu", threads: int = DEFAULT_THREADS):
        try:
            import torch
        except ImportError:
            raise BackendUnavailable("the torchscript backend needs torch: pip install charlm[torch]") from None
        if device == "cuda" and not torch.cuda.is_available():
            raise BackendUnavailable("device cuda: torch sees no CUDA GPU")
        if device not in ("cpu", "cuda"):
            raise BackendUnavailable(f"unknown device {device!r} (cpu or cuda)")
        self._torch = torch
        # torch's pool is process-wide: a serving worker runs one model, so its size is ours to set.
        torch.set_num_threads(threads)
        try:
            with warnings.catch_warnings():  # torch 2.13 deprecates torch.jit; the file format is still ours
                warnings.simplefilter("ignore", DeprecationWarning)
                self._module = torch.jit.load(str(path), map_location=device).eval()
        except Exception as exc:  # torch.jit raises RuntimeError and friends with multi-line text
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise EngineError(f"{path}: torch.jit cannot load it: {first}") from None
        self.device = device
        self._n_outputs = len(graph_io(manifest)[1])

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        torch = self._torch
        with torch.inference_mode():
            args = [torch.from_numpy(np.ascontiguousarray(a)).to(self.device) for a in inputs]
            out = self._module(*args)
        if isinstance(out, torch.Tensor):
            out = (out,)
        if len(out) != self._n_outputs:
            raise EngineError(f"torchscript module returned {len(out)} outputs, the contract says {self._n_outputs}")
        return [t.detach().cpu().numpy() for t in out]


def load_backend(
    path: Path, manifest: Manifest, backend: BackendName, device: Device, threads: int
) -> OnnxBackend | TorchScriptBackend:
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    if backend == "onnx":
        return OnnxBackend(path, manifest, device, threads)
    if backend == "torchscript":
        return TorchScriptBackend(path, manifest, device, threads)
    raise BackendUnavailable(f"unknown backend {backend!r} (onnx or torchscript)")
