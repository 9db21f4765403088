"""TorchScript export by tracing, and a runner for checks: the ONLY module that touches torch.jit.

torch 2.13 deprecates torch.jit (a DeprecationWarning on every trace/save/load). We still ship
model.ts for consumers that want a torch-native file; when torch.export's serialised programs
(`torch.export.save`) replace it, this module is the one to rewrite.

Tracing records sizes with aten::size, so batch, new and past stay dynamic. The one TracerWarning it
raises comes from GPT's `split(n_embd)`, a constant of the model; graphs are traced at shapes unlike
any the parity checks use, so a size baked in by mistake fails those checks rather than passing silently.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from training.export.graphs import GraphSpec, Runner


def export_torchscript(spec: GraphSpec, path: Path) -> None:
    """Trace spec's eval-mode wrapper at its example inputs and save it to `path`."""
    with _no_jit_warnings(), torch.no_grad():
        traced = torch.jit.trace(spec.module, spec.example, check_trace=False)
        traced.save(str(path))


def load_runner(path: Path) -> Runner:
    """The saved file, loaded as a consumer would: positional inputs, flat tuple of outputs."""
    with _no_jit_warnings():
        module = torch.jit.load(str(path), map_location="cpu")
    module.eval()

    def run(arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
        with torch.no_grad():
            outputs = module(*(torch.from_numpy(np.asarray(a)) for a in arrays))
        return [t.numpy() for t in outputs]

    return run


@contextlib.contextmanager
def _no_jit_warnings() -> Iterator[None]:
    """Silence torch.jit's deprecation notice and the tracer's notes, deliberately and only here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, message=r".*torch\.jit")
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        yield
