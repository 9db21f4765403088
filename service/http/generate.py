"""POST /v1/generate, the native route: its request, its response shapes and how one becomes the other.

`text` is the whole sample: the prompt followed by what the model generated; streaming, each choice's
first event carries the prompt, and the last event has every finish_reason, the usage and the timing.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from contract import Manifest
from engine import MAX_NEW_TOKENS_CAP, FinishReason
from service.http.bodies import CompletionLogprobs, Novel, Timing
from service.http.prompts import Prepared, prepare
from service.http.reply import Reply, dump, full_text, head
from service.http.sampling import _STRICT, NOVEL_ONLY, TEXT_CHOICE, Int, OptInt, Sampling
from service.protocol import MAX_CHOICES, ChoiceDelta, Final


class GenerateRequest(Sampling):
    """POST /v1/generate."""

    model_config = _STRICT

    model: str = Field(min_length=1, description="a model id from GET /v1/models")
    prompt: str = Field("", description="text the sample starts with (names: the first letters)")
    n: Int = Field(1, ge=1, le=MAX_CHOICES, description="independent samples, run as one batch")
    max_new_tokens: OptInt = Field(
        None,
        ge=0,
        le=MAX_NEW_TOKENS_CAP,
        description="default: lines models run to their end marker (at most 64), stream models 256; "
        "0 with logprobs scores the prompt",
    )
    logprobs: OptInt = Field(None, ge=0, description="alternatives per character (0: the chosen one only)")
    stream: bool = Field(False, description="Server-Sent Events instead of one JSON body")
    novel_only: bool = Field(False, description=NOVEL_ONLY)

    @property
    def prompts(self) -> list[str | list[int]]:
        return [self.prompt]


class GenerateChoice(BaseModel):
    index: int
    text: str = Field(description="prompt + generated text")
    finish_reason: FinishReason
    logprobs: CompletionLogprobs | None = None
    novel: Novel = None


class GenerateUsage(BaseModel):
    prompt_tokens: int
    completion_tokens: int


class GenerateResponse(BaseModel):
    id: str
    model: str
    choices: list[GenerateChoice]
    usage: GenerateUsage
    timing: Timing


class GenerateStreamChoice(BaseModel):
    index: int
    text: str
    finish_reason: FinishReason | None = None
    logprobs: CompletionLogprobs | None = None
    novel: Novel = None


class GenerateChunk(BaseModel):
    """One SSE event of /v1/generate; the last one has every finish_reason, `usage` and `timing`."""

    id: str
    model: str
    choices: list[GenerateStreamChoice]
    usage: GenerateUsage | None = None
    timing: Timing | None = None


class GenerateRoute:
    """POST /v1/generate: native shapes (`text` starts with the prompt)."""

    path = "/v1/generate"
    prefix = "gen-"
    request = GenerateRequest
    response = GenerateResponse
    budget_param = "max_new_tokens"
    summary = "Generate samples (native API)"
    description = TEXT_CHOICE

    @staticmethod
    def prepare(body: GenerateRequest, manifest: Manifest, rid: str, deadline: float) -> Prepared:
        return prepare(body, manifest, rid, deadline, echo=True, budget=body.max_new_tokens, best_of=None)

    @staticmethod
    def full(r: Reply, final: Final, timing: Timing) -> dict[str, Any]:
        choices = [
            GenerateChoice(
                index=i,
                text=full_text(r, i, c),
                finish_reason=c.finish_reason,
                logprobs=r.legacy(i, c.logprobs, c.prompt_logprobs, c.boundary),
                novel=c.novel,
            )
            for i, c in enumerate(final.choices)
        ]
        usage = GenerateUsage(prompt_tokens=final.prompt_tokens, completion_tokens=final.completion_tokens)
        return GenerateResponse(
            id=r.req.rid, model=r.req.model, choices=choices, usage=usage, timing=timing
        ).model_dump()

    @staticmethod
    def opening(r: Reply) -> list[dict[str, Any]]:
        if r.logprobs:  # the prompt goes out with its scores, on the first delta
            return []
        return [
            GenerateRoute._event(r, i, r.req.prompt_of(i), None) for i in range(r.req.choices) if r.req.prompt_of(i)
        ]

    @staticmethod
    def chunk(r: Reply, d: ChoiceDelta, completion_tokens: int) -> dict[str, Any]:
        return GenerateRoute._event(
            r, d.index, head(r, d.index, d) + d.text, r.legacy(d.index, d.logprobs, d.prompt_logprobs, d.boundary)
        )

    @staticmethod
    def _event(r: Reply, i: int, text: str, logprobs: Any) -> dict[str, Any]:
        choice = GenerateStreamChoice(index=i, text=text, finish_reason=None, logprobs=logprobs)
        body = dump(GenerateChunk(id=r.req.rid, model=r.req.model, choices=[choice]))
        if logprobs is None:
            del body["choices"][0]["logprobs"]
        return body

    @staticmethod
    def closing(r: Reply, final: Final, timing: Timing) -> list[dict[str, Any]]:
        choices = [
            GenerateStreamChoice(index=i, text="", finish_reason=c.finish_reason, novel=c.novel)
            for i, c in enumerate(final.choices)
        ]
        usage = GenerateUsage(prompt_tokens=final.prompt_tokens, completion_tokens=final.completion_tokens)
        body = dump(GenerateChunk(id=r.req.rid, model=r.req.model, choices=choices, usage=usage, timing=timing))
        for c in body["choices"]:
            del c["logprobs"]
        return [body]
