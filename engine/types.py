"""The engine's public value types and errors (no numpy, no onnxruntime: cheap for the app to import)."""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Literal, NamedTuple

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
    are left out of its text (OpenAI semantics). Penalties and `logit_bias` follow OpenAI's and vLLM's
    definitions and change the logits before temperature, top-k and top-p; `logprobs` (the number of
    alternatives per token, 0 for the chosen one only) and `prompt_logprobs` report the model's own
    log-probabilities (log-softmax of the raw logits, before any of those), so a score never depends on
    sampling settings. `max_new_tokens` 0 with `prompt_logprobs` scores a prompt without generating.
    `ignore_eos`: a `lines` model writes its boundary mark and goes on instead of stopping there;
    `min_tokens`: neither the boundary nor a stop string can end the sequence before that many tokens.
    """

    temperature: float = 1.0
    top_k: int | None = None
    top_p: float = 1.0
    seed: int | None = None
    max_new_tokens: int | None = None
    stop: tuple[str, ...] = field(default=())
    min_tokens: int = 0
    ignore_eos: bool = False
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: tuple[tuple[int, float], ...] = field(default=())
    logprobs: int | None = None
    prompt_logprobs: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        elif not isinstance(self.stop, tuple):
            object.__setattr__(self, "stop", tuple(self.stop))
        if isinstance(self.logit_bias, dict):
            object.__setattr__(
                self, "logit_bias", tuple(sorted((int(k), float(v)) for k, v in self.logit_bias.items()))
            )
        if not self.temperature >= 0:  # also rejects NaN
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens is not None and self.max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {self.max_new_tokens}")
        if any(not isinstance(s, str) for s in self.stop):
            raise ValueError("stop must be strings")
        if self.min_tokens < 0:
            raise ValueError(f"min_tokens must be >= 0, got {self.min_tokens}")
        if not 0 < self.repetition_penalty <= 2:
            raise ValueError(f"repetition_penalty must be in (0, 2], got {self.repetition_penalty}")
        for name in ("presence_penalty", "frequency_penalty"):
            if not -2 <= getattr(self, name) <= 2:
                raise ValueError(f"{name} must be in [-2, 2], got {getattr(self, name)}")
        if any(not -100 <= b <= 100 for _, b in self.logit_bias):
            raise ValueError("logit_bias values must be in [-100, 100]")
        if self.logprobs is not None and self.logprobs < 0:
            raise ValueError(f"logprobs must be >= 0, got {self.logprobs}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0 or self.top_k == 1

    @property
    def adjusts_logits(self) -> bool:
        """Whether any penalty, bias or min_tokens changes this sequence's logits."""
        return bool(
            self.min_tokens
            or self.logit_bias
            or self.repetition_penalty != 1
            or self.presence_penalty
            or self.frequency_penalty
        )


@dataclass(frozen=True)
class TokenLogprob:
    """The model's log-probability of one token, and the `top` most likely alternatives at its place."""

    token: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()


class Delta(NamedTuple):
    """New text of request `request_id`; `finish_reason` is set on its last one.

    Immutable like the other value types, but a NamedTuple: the engine makes one per row per step, and
    a frozen dataclass costs several times as much to build (docs/benchmarks.md, "The step's Python").

    The last one also carries `completion_tokens`: every token the sequence sampled, its end (boundary
    token or stop string) included, as in Completion. With `logprobs` asked for, `logprobs` has one entry
    per character of `text`, and the last delta of a `lines` sequence that stopped at its boundary has
    `boundary_logprob`. With `prompt_logprobs`, the sequence's first delta has one entry per prompt
    character (None where the model saw no context before it).
    """

    request_id: Hashable
    text: str
    finish_reason: FinishReason | None
    completion_tokens: int | None = None
    logprobs: tuple[TokenLogprob, ...] | None = None
    boundary_logprob: TokenLogprob | None = None
    prompt_logprobs: tuple[TokenLogprob | None, ...] | None = None


@dataclass(frozen=True)
class Completion:
    """A finished sequence: only the generated text (the prompt is not echoed)."""

    text: str
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    # when asked (SamplingParams.logprobs): each generated token's, then the boundary's if it ended the text
    logprobs: tuple[TokenLogprob, ...] = ()
