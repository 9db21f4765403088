"""The engine's public value types and errors (no numpy, no onnxruntime: cheap for the app to import)."""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Literal

FinishReason = Literal["stop", "length"]


class EngineError(Exception):
    """Base class: anything the engine refuses, with a one-line message."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class BackendUnavailable(EngineError):
    """The asked-for backend or device cannot run here (torchscript without torch, cuda without a GPU)."""


class InvalidPrompt(EngineError):
    """The prompt has characters the model cannot encode; `.chars` lists them in order of appearance."""

    def __init__(self, message: str, chars: tuple[str, ...] = ()):
        super().__init__(message)
        self.chars = chars


@dataclass(frozen=True)
class SamplingParams:
    """How to pick each next character of one sequence.

    temperature 0 (or top_k 1) is greedy argmax; `seed` gives the sequence its own RNG, so a seeded
    sequence produces the same text whatever else shares its batch. `stop` strings end the sequence and
    are left out of its text (OpenAI semantics).
    """

    temperature: float = 1.0
    top_k: int | None = None
    top_p: float = 1.0
    seed: int | None = None
    max_new_tokens: int | None = None
    stop: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        elif not isinstance(self.stop, tuple):
            object.__setattr__(self, "stop", tuple(self.stop))
        if not self.temperature >= 0:  # also rejects NaN
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if any(not isinstance(s, str) for s in self.stop):
            raise ValueError("stop must be strings")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0 or self.top_k == 1


@dataclass(frozen=True)
class Delta:
    """New text of request `request_id`; `finish_reason` is set on its last one.

    The last one also carries `completion_tokens`: every token the sequence sampled, its end (boundary
    token or stop string) included, as in Completion.
    """

    request_id: Hashable
    text: str
    finish_reason: FinishReason | None
    completion_tokens: int | None = None


@dataclass(frozen=True)
class Completion:
    """A finished sequence: only the generated text (the prompt is not echoed)."""

    text: str
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
