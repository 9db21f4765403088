"""The generation engine: load an exported model folder and sample text from it, batched, with or without torch.

`Engine` is the request-level API (add / step / abort over preallocated slots; docs/engine.md);
`Generator` is a thin offline loop over it. `service` (the HTTP server's workers) and `training`
(sampling, model cards, export parity) both use the engine through this module only.

Importing it is cheap: the value types and request rules load at once (no numpy), the engine and its
backends on first use (numpy and onnxruntime; torch only inside the TorchScript and eager backends).
So the API server processes, which need only the types, never load numpy or onnxruntime.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from engine.rules import (
    MAX_NEW_TOKENS_CAP,
    default_max_new_tokens,
    offending_chars,
    prompt_problem,
    vocabulary_problem,
)
from engine.types import (
    BackendUnavailable,
    Completion,
    Delta,
    EngineError,
    FinishReason,
    InvalidPrompt,
    SamplingParams,
    TokenLogprob,
)

if TYPE_CHECKING:
    from engine.backends import BackendName, Device, TorchEagerBackend, load_backend
    from engine.engine import DEFAULT_SLOTS, Engine, model_spec
    from engine.generator import Generator
    from engine.novelty import DataHashes
    from engine.sampling import derive_seed

# name -> the submodule that defines it, imported on first access (PEP 562)
_LAZY = {
    "BackendName": "backends",
    "Device": "backends",
    "TorchEagerBackend": "backends",
    "load_backend": "backends",
    "DEFAULT_SLOTS": "engine",
    "Engine": "engine",
    "model_spec": "engine",
    "Generator": "generator",
    "DataHashes": "novelty",
    "derive_seed": "sampling",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'engine' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"engine.{module}"), name)
    globals()[name] = value
    return value


__all__ = [
    "DEFAULT_SLOTS",
    "MAX_NEW_TOKENS_CAP",
    "BackendName",
    "BackendUnavailable",
    "Completion",
    "DataHashes",
    "Delta",
    "Device",
    "Engine",
    "EngineError",
    "FinishReason",
    "Generator",
    "InvalidPrompt",
    "SamplingParams",
    "TokenLogprob",
    "TorchEagerBackend",
    "default_max_new_tokens",
    "derive_seed",
    "load_backend",
    "model_spec",
    "offending_chars",
    "prompt_problem",
    "vocabulary_problem",
]
