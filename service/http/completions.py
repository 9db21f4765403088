"""POST /v1/completions, OpenAI's legacy completions: its request, its response shapes and how one
becomes the other. The text is only the completion unless `echo`; prompts may be texts or token ids;
`best_of` samples more and keeps the n best. Usage is streamed as OpenAI does (`stream_options`).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

from contract import Manifest
from engine import FinishReason
from service.http.bodies import CompletionLogprobs, CompletionUsage, Novel, Timing
from service.http.prompts import Prepared, prepare
from service.http.reply import Reply, dump, full_text, head, openai_closing, so_far
from service.http.sampling import (
    NOVEL_ONLY,
    TEXT_CHOICE,
    IdsList,
    OpenAIFields,
    OptInt,
    PromptList,
    TokenIds,
    _unsupported,
)
from service.protocol import MAX_CHOICES, ChoiceDelta, Final


class CompletionRequest(OpenAIFields):
    """POST /v1/completions: OpenAI's legacy completions request."""

    prompt: str | PromptList | TokenIds | IdsList = Field("", description="text, texts, token ids, or lists of ids")
    echo: bool | None = Field(False, description="prepend the prompt (and its logprobs) to each choice")
    logprobs: OptInt = Field(None, ge=0, description="alternatives per token: 0-5 (OpenAI), up to the vocabulary")
    best_of: OptInt = Field(None, ge=1, le=MAX_CHOICES, description="samples per prompt; the n best are kept")
    suffix: str | None = Field(None, json_schema_extra={"maxLength": 0}, description="not supported: empty or null")
    novel_only: bool | None = Field(False, description=NOVEL_ONLY)

    @field_validator("prompt", mode="before")
    @classmethod
    def _nonempty(cls, value: object) -> object:
        if isinstance(value, list) and not value:
            raise PydanticCustomError("too_short", "a prompt list must not be empty")
        if isinstance(value, list) and len(value) > MAX_CHOICES and not all(isinstance(x, int) for x in value):
            raise PydanticCustomError("too_long", f"at most {MAX_CHOICES} prompts, got {len(value)}")
        return value

    @field_validator("suffix")
    @classmethod
    def _no_suffix(cls, value: str | None) -> str | None:
        if value:
            raise _unsupported("suffix", "leave it null")
        return value

    @field_validator("best_of")
    @classmethod
    def _best_of(cls, value: int | None, info: ValidationInfo) -> int | None:
        n = info.data.get("n") or 1
        if value is not None and value < n:
            raise PydanticCustomError("best_of", f"best_of must be >= n ({n})")
        if value is not None and value > n and info.data.get("stream"):
            raise PydanticCustomError("best_of", "best_of > n cannot be streamed (as in OpenAI)")
        return value

    @property
    def prompts(self) -> list[str | list[int]]:
        """One entry per prompt: text, or token ids."""
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if all(isinstance(x, int) for x in p):
            return [list(p)]  # type: ignore[arg-type]
        return list(p)  # type: ignore[arg-type]


class CompletionChoice(BaseModel):
    text: str
    index: int
    logprobs: CompletionLogprobs | None = None
    finish_reason: FinishReason
    novel: Novel = None


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: CompletionUsage


class CompletionStreamChoice(BaseModel):
    text: str
    index: int
    logprobs: CompletionLogprobs | None = None
    finish_reason: FinishReason | None = None
    novel: Novel = None


class CompletionChunk(BaseModel):
    """One SSE event of /v1/completions (OpenAI's text_completion chunk)."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionStreamChoice]
    usage: CompletionUsage | None = None


class CompletionsRoute:
    """POST /v1/completions: OpenAI's text_completion shapes."""

    path = "/v1/completions"
    prefix = "cmpl-"
    request = CompletionRequest
    response = CompletionResponse
    budget_param = "max_tokens"
    summary = "OpenAI's /v1/completions"
    description = TEXT_CHOICE

    @staticmethod
    def prepare(body: CompletionRequest, manifest: Manifest, rid: str, deadline: float) -> Prepared:
        return prepare(body, manifest, rid, deadline, echo=bool(body.echo), budget=body.budget, best_of=body.best_of)

    @staticmethod
    def full(r: Reply, final: Final, timing: Timing) -> dict[str, Any]:
        choices = [
            CompletionChoice(
                text=full_text(r, i, c),
                index=i,
                logprobs=r.legacy(i, c.logprobs, c.prompt_logprobs, c.boundary),
                finish_reason=c.finish_reason,
                novel=c.novel,
            )
            for i, c in enumerate(final.choices)
        ]
        usage = r.usage(final.prompt_tokens, final.completion_tokens)
        return CompletionResponse(
            id=r.req.rid, created=r.created, model=r.req.model, choices=choices, usage=usage
        ).model_dump()

    @staticmethod
    def _event(r: Reply, choices: list[CompletionStreamChoice], usage: CompletionUsage | None) -> dict[str, Any]:
        chunk = CompletionChunk(id=r.req.rid, created=r.created, model=r.req.model, choices=choices, usage=usage)
        return dump(chunk, keep_usage=r.include_usage)

    @staticmethod
    def opening(r: Reply) -> list[dict[str, Any]]:
        if not r.echo or r.logprobs:
            return []
        return [
            CompletionsRoute._event(r, [CompletionStreamChoice(text=r.req.prompt_of(i), index=i)], so_far(r, 0))
            for i in range(r.req.choices)
            if r.req.prompt_of(i)
        ]

    @staticmethod
    def chunk(r: Reply, d: ChoiceDelta, completion_tokens: int) -> dict[str, Any]:
        i = d.index
        logprobs = r.legacy(i, d.logprobs, d.prompt_logprobs, d.boundary)
        choice = CompletionStreamChoice(text=head(r, i, d) + d.text, index=i, logprobs=logprobs)
        return CompletionsRoute._event(r, [choice], so_far(r, completion_tokens))

    @staticmethod
    def closing(r: Reply, final: Final, timing: Timing) -> list[dict[str, Any]]:
        choices = [
            CompletionStreamChoice(text="", index=i, finish_reason=c.finish_reason, novel=c.novel)
            for i, c in enumerate(final.choices)
        ]
        return openai_closing(r, CompletionsRoute._event, choices, final)
