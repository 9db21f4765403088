"""Where a GPT's KV cache lives: host memory (numpy) or a torch device's memory.

On a GPU the cache must stay on the device from step to step: copying it to the device for every call
costs more than the call. So the cache (engine/kv.py) and the backends' bound decode calls
(engine/backends.py) reach its arrays only through the few operations below, and one cache, one runner
and one binding serve every device. Numpy arrays and torch tensors share the indexing the cache uses
(slices, integer-array rows, `swapaxes`); what differs is how an array is made, filled from the host,
copied, brought back to the host, and addressed for ONNX Runtime's IOBinding.

`HOST` is what ONNX Runtime on the CPU and the eager net use; `TorchArrays(device)` what TorchScript
uses on any device and ONNX Runtime on CUDA (the cache in torch CUDA tensors, bound by address).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from engine.types import BackendUnavailable


class HostArrays:
    """numpy arrays in host memory: every operation is numpy's own (no copies beyond numpy's)."""

    device_type = "cpu"
    device_id = 0

    def zeros(self, n: int) -> np.ndarray:
        return np.zeros(n, np.float32)

    def empty(self, shape: tuple[int, ...]) -> np.ndarray:
        return np.empty(shape, np.float32)

    def take(self, a: np.ndarray) -> np.ndarray:
        """A graph's output (numpy) as this storage's array: itself."""
        return a

    def index(self, rows: np.ndarray) -> np.ndarray:
        return rows

    def fill(self, dst: np.ndarray, src: np.ndarray) -> None:
        np.copyto(dst, src)

    def copy(self, a: np.ndarray) -> np.ndarray:
        return a.copy()

    def host(self, a: np.ndarray) -> np.ndarray:
        return a

    def address(self, a: np.ndarray) -> int:
        return a.__array_interface__["data"][0]

    def sync(self) -> None:
        """Nothing is queued on the host."""


HOST = HostArrays()


class TorchArrays:
    """torch tensors on `device` ("cpu", "cuda", "cuda:1"). Made outside inference mode, so the cache
    can be written in place between graph calls; host arrays become device tensors on the way in, and
    only what the host reads (logits) comes back."""

    def __init__(self, device: str = "cpu"):
        try:
            import torch
        except ImportError:
            raise BackendUnavailable(
                f"device {device}: the cache lives in torch tensors: pip install charlm[torch]"
            ) from None
        self._torch = torch
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise BackendUnavailable(f"device {device}: torch sees no CUDA GPU")
        self.device_type = self.device.type
        self.device_id = self.device.index or 0

    def zeros(self, n: int) -> Any:
        return self._torch.zeros(n, dtype=self._torch.float32, device=self.device)

    def empty(self, shape: tuple[int, ...]) -> Any:
        return self._torch.empty(shape, dtype=self._torch.float32, device=self.device)

    def take(self, a: Any) -> Any:
        """A host array (copied to the device, made contiguous) or a tensor already here (as it is)."""
        if isinstance(a, np.ndarray):
            return self._torch.from_numpy(np.ascontiguousarray(a)).to(self.device)
        return a

    def index(self, rows: np.ndarray) -> Any:
        return self._torch.as_tensor(rows, device=self.device)

    def fill(self, dst: Any, src: np.ndarray) -> None:
        dst.copy_(self._torch.from_numpy(np.ascontiguousarray(src)))

    def copy(self, a: Any) -> Any:
        return a.clone()

    def host(self, a: Any) -> np.ndarray:
        return a.detach().cpu().numpy()

    def address(self, a: Any) -> int:
        return a.data_ptr()

    def sync(self) -> None:
        """Wait for torch's queued work on the device (cache writes, copies) before another library's
        stream reads the memory: ONNX Runtime runs on a stream of its own."""
        if self.device_type == "cuda":
            self._torch.cuda.synchronize(self.device)
