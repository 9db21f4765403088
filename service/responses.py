"""Response bodies of the two generation routes, built by instantiating the `schemas` models, so the
OpenAPI document describes exactly what the server sends.

/v1/generate's `text` is the prompt plus the generated characters; /v1/completions' is only the
completion unless `echo`. Both take a worker's `Final` (and, streaming, its `Chunk`s).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from service.protocol import EngineRequest, Final
from service.schemas import (
    CompletionChoice,
    CompletionChunk,
    CompletionResponse,
    CompletionStreamChoice,
    CompletionUsage,
    GenerateChoice,
    GenerateChunk,
    GenerateResponse,
    GenerateStreamChoice,
    GenerateUsage,
    Timing,
)


@dataclass(frozen=True)
class Reply:
    """A request being answered: what was asked, and whether each choice starts with its prompt."""

    req: EngineRequest
    echo: bool
    created: int = field(default_factory=lambda: int(time.time()))


def _dump(model: Any) -> dict[str, Any]:
    body = model.model_dump()
    for key in ("usage", "timing"):
        if key in body and body[key] is None:
            del body[key]
    return body


class GenerateShape:
    """POST /v1/generate: native shapes."""

    api_path = "/v1/generate"
    prefix = "gen-"

    @staticmethod
    def full(r: Reply, final: Final, timing: Timing) -> dict[str, Any]:
        choices = [
            GenerateChoice(index=i, text=r.req.prompt_of(i) + (c.text or ""), finish_reason=c.finish_reason)
            for i, c in enumerate(final.choices)
        ]
        usage = GenerateUsage(prompt_tokens=final.prompt_tokens, completion_tokens=final.completion_tokens)
        return GenerateResponse(
            id=r.req.rid, model=r.req.model, choices=choices, usage=usage, timing=timing
        ).model_dump()

    @staticmethod
    def chunk(r: Reply, index: int, text: str) -> dict[str, Any]:
        choice = GenerateStreamChoice(index=index, text=text, finish_reason=None)
        return _dump(GenerateChunk(id=r.req.rid, model=r.req.model, choices=[choice]))

    @staticmethod
    def last(r: Reply, final: Final, timing: Timing) -> dict[str, Any]:
        choices = [
            GenerateStreamChoice(index=i, text="", finish_reason=c.finish_reason) for i, c in enumerate(final.choices)
        ]
        usage = GenerateUsage(prompt_tokens=final.prompt_tokens, completion_tokens=final.completion_tokens)
        return _dump(GenerateChunk(id=r.req.rid, model=r.req.model, choices=choices, usage=usage, timing=timing))


class CompletionShape:
    """POST /v1/completions: OpenAI's text_completion shapes."""

    api_path = "/v1/completions"
    prefix = "cmpl-"

    @staticmethod
    def _usage(final: Final) -> CompletionUsage:
        p, c = final.prompt_tokens, final.completion_tokens
        return CompletionUsage(prompt_tokens=p, completion_tokens=c, total_tokens=p + c)

    @classmethod
    def full(cls, r: Reply, final: Final, timing: Timing) -> dict[str, Any]:
        choices = [
            CompletionChoice(
                text=(r.req.prompt_of(i) if r.echo else "") + (c.text or ""),
                index=i,
                logprobs=None,
                finish_reason=c.finish_reason,
            )
            for i, c in enumerate(final.choices)
        ]
        body = CompletionResponse(
            id=r.req.rid, created=r.created, model=r.req.model, choices=choices, usage=cls._usage(final)
        )
        return body.model_dump()

    @staticmethod
    def chunk(r: Reply, index: int, text: str) -> dict[str, Any]:
        choice = CompletionStreamChoice(text=text, index=index, logprobs=None, finish_reason=None)
        return _dump(CompletionChunk(id=r.req.rid, created=r.created, model=r.req.model, choices=[choice]))

    @classmethod
    def last(cls, r: Reply, final: Final, timing: Timing) -> dict[str, Any]:
        choices = [
            CompletionStreamChoice(text="", index=i, logprobs=None, finish_reason=c.finish_reason)
            for i, c in enumerate(final.choices)
        ]
        chunk = CompletionChunk(
            id=r.req.rid, created=r.created, model=r.req.model, choices=choices, usage=cls._usage(final)
        )
        return _dump(chunk)


Shape = type[GenerateShape] | type[CompletionShape]
