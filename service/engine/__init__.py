"""The generation engine: load an exported model, sample text from it, batched, with or without torch.

The ONNX path imports numpy and onnxruntime only; torch is imported lazily by the TorchScript backend.
"""

from service.engine.generator import Generator
from service.engine.sampling import derive_seed
from service.engine.types import (
    BackendUnavailable,
    Completion,
    Delta,
    EngineError,
    InvalidPrompt,
    SamplingParams,
)

__all__ = [
    "BackendUnavailable",
    "Completion",
    "Delta",
    "EngineError",
    "Generator",
    "InvalidPrompt",
    "SamplingParams",
    "derive_seed",
]
