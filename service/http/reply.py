"""What every generation route family provides (`Route`) and shares to answer (`Reply`).

A family (service.http.generate, .completions, .chat) is one class of static methods: `prepare` turns
its body into an EngineRequest, `full` builds the whole response, and streaming, `opening`, `chunk` and
`closing` turn the worker's events into SSE bodies.

/v1/generate's `text` is the prompt plus the generated characters; /v1/completions' is only the
completion unless `echo`; chat's is the reply. Streaming, a shape turns the worker's events into
chunks: `opening` (when a worker took the request), `chunk` (each ChoiceDelta) and `closing` (the
Final). On the OpenAI routes usage is streamed as OpenAI does: only with `stream_options.include_usage`,
then as one last chunk with `choices: []` (the other chunks carry `usage: null`), or on every chunk
with vLLM's `continuous_usage_stats`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from pydantic import BaseModel

from contract import Manifest
from service.http import logprobs as scores
from service.http.bodies import CompletionUsage, Timing
from service.http.prompts import Prepared
from service.protocol import ChoiceDelta, ChoiceResult, EngineRequest, Final


@dataclass
class Reply:
    """A request being answered: what was asked, how to show it, and the stream's running offsets."""

    req: EngineRequest
    echo: bool
    vocab: tuple[str, ...]
    mark: str | None = None  # a `lines` model's boundary mark
    lead: tuple[bool, ...] = ()
    include_usage: bool = False
    continuous_usage: bool = False
    created: int = field(default_factory=lambda: int(time.time()))
    offsets: dict[int, int] = field(default_factory=dict)

    @property
    def logprobs(self) -> bool:
        return self.req.sampling.logprobs is not None

    def prompt_index(self, choice: int) -> int:
        return choice // self.req.n

    def pieces(self, i: int, lps: Any, prompt_lps: Any, boundary: Any) -> list[scores.Piece]:
        p = self.prompt_index(i)
        return scores.pieces(
            self.vocab,
            self.mark,
            prompt=self.req.prompts[p],
            prompt_lps=prompt_lps if self.echo else None,
            lead=bool(self.lead and self.lead[p]),
            lps=lps,
            boundary=boundary,
        )

    def legacy(self, i: int, lps: Any, prompt_lps: Any, boundary: Any) -> Any:
        if not self.logprobs:
            return None
        body, self.offsets[i] = scores.legacy(
            self.vocab, self.pieces(i, lps, prompt_lps, boundary), self.offsets.get(i, 0)
        )
        return body

    def usage(self, prompt_tokens: int, completion_tokens: int) -> CompletionUsage:
        return CompletionUsage(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            total_tokens=prompt_tokens + completion_tokens,
        )


def dump(model: Any, keep_usage: bool = False) -> dict[str, Any]:
    body = model.model_dump()
    for key in ("usage", "timing"):
        if key in body and body[key] is None and not (key == "usage" and keep_usage):
            del body[key]
    return body


def head(r: Reply, i: int, d: ChoiceDelta) -> str:
    """The prompt, when this delta carries its scores and the choice shows it."""
    return r.req.prompt_of(i) if r.echo and d.prompt_logprobs is not None else ""


def full_text(r: Reply, i: int, c: ChoiceResult) -> str:
    return (r.req.prompt_of(i) if r.echo else "") + (c.text or "")


def so_far(r: Reply, completion_tokens: int) -> CompletionUsage | None:
    """vLLM's continuous usage: the prompt and the tokens generated so far, on every chunk."""
    if not r.continuous_usage:
        return None
    prompt = sum(len(p) for p in r.req.prompts)
    return r.usage(prompt, completion_tokens)


def openai_closing(
    r: Reply, event: Callable[..., dict[str, Any]], choices: list[Any], final: Final
) -> list[dict[str, Any]]:
    """The OpenAI routes' last events: every finish_reason (with the usage only under vLLM's continuous
    usage), then, with `stream_options.include_usage`, one more chunk with `choices: []` and the usage."""
    usage = r.usage(final.prompt_tokens, final.completion_tokens)
    events = [event(r, choices, usage if r.continuous_usage else None)]
    if r.include_usage:
        events.append(event(r, [], usage))
    return events


class Route(Protocol):
    """One generation route family, as the gateway and the route table (service.http.routes) use it."""

    path: ClassVar[str]
    prefix: ClassVar[str]  # of the response ids
    request: ClassVar[type[BaseModel]]
    response: ClassVar[type[BaseModel]]
    budget_param: ClassVar[str]  # the field that sets the token budget, named by the cost rule's 400
    summary: ClassVar[str]
    description: ClassVar[str]  # the OpenAPI description of its endpoint

    @staticmethod
    def prepare(body: Any, manifest: Manifest, rid: str, deadline: float) -> Prepared: ...

    @staticmethod
    def full(r: Reply, final: Final, timing: Timing) -> dict[str, Any]: ...

    @staticmethod
    def opening(r: Reply) -> list[dict[str, Any]]: ...

    @staticmethod
    def chunk(r: Reply, d: ChoiceDelta, completion_tokens: int) -> dict[str, Any]: ...

    @staticmethod
    def closing(r: Reply, final: Final, timing: Timing) -> list[dict[str, Any]]: ...
