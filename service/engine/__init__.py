"""The generation engine: load an exported model, sample text from it, batched, with or without torch.

`Engine` is the request-level API (add / step / abort over preallocated slots); `Generator` is a
thin offline loop over it. The ONNX path imports numpy and onnxruntime only; torch is imported lazily
by the TorchScript backend.
"""

from service.engine.engine import Engine
from service.engine.generator import Generator
from service.engine.sampling import derive_seed
from service.engine.types import (
    BackendUnavailable,
    Completion,
    Delta,
    EngineError,
    InvalidPrompt,
    SamplingParams,
    TokenLogprob,
)

__all__ = [
    "BackendUnavailable",
    "Completion",
    "Delta",
    "Engine",
    "EngineError",
    "Generator",
    "InvalidPrompt",
    "SamplingParams",
    "TokenLogprob",
    "derive_seed",
]
