"""Request and response bodies of the HTTP API, as pydantic models (they also make the OpenAPI docs).

Requests are strict (no "1" for 1, no unknown fields) so that a typo is a 400 naming the field rather
than a silently ignored option.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

from service.protocol import MAX_CHOICES, MAX_NEW_TOKENS_CAP, MAX_STOP, EngineRequest, FinishReason

SEED_MIN, SEED_MAX = -(2**63), 2**64 - 1
StopString = Annotated[str, Field(min_length=1, max_length=256)]
Stop = Annotated[list[StopString], Field(max_length=MAX_STOP)] | None

_STRICT = ConfigDict(extra="forbid", strict=True)

TEXT_CHOICE = (
    "/v1/generate returns the whole sample in `text`: the prompt followed by what the model generated "
    '(names-gpt with prompt "ka" gives e.g. "kaylee"); `usage.completion_tokens` counts only the '
    "generated part. When streaming, each choice's first event carries the prompt. /v1/completions "
    "returns only the generated text, as OpenAI does, unless `echo` is true."
)


def _one_or_many(value: object) -> object:
    """OpenAI accepts `stop` as one string or a list of them."""
    return [value] if isinstance(value, str) else value


def _unsupported(field: str, hint: str) -> PydanticCustomError:
    return PydanticCustomError("unsupported", f"{field} is not supported by charlm; {hint}")


class GenerateRequest(BaseModel):
    """POST /v1/generate."""

    model_config = _STRICT

    model: str = Field(min_length=1, description="a model id from GET /v1/models")
    prompt: str = Field("", description="text the sample starts with (names: the first letters)")
    n: int = Field(1, ge=1, le=MAX_CHOICES, description="independent samples, run as one batch")
    max_new_tokens: int | None = Field(
        None,
        ge=1,
        le=MAX_NEW_TOKENS_CAP,
        description="default: lines models run to their end marker (at most 64), stream models 256",
    )
    temperature: float = Field(1.0, ge=0, allow_inf_nan=False, description="0 = greedy (argmax)")
    top_k: int | None = Field(None, ge=1, description="sample among the k most likely characters")
    top_p: float = Field(1.0, gt=0, le=1, allow_inf_nan=False, description="nucleus sampling mass")
    seed: int | None = Field(None, ge=SEED_MIN, le=SEED_MAX, description="same seed, same text (alone or in a batch)")
    stop: Stop = Field(None, description=f"a string or up to {MAX_STOP} strings that end a sample (left out of text)")
    stream: bool = Field(False, description="Server-Sent Events instead of one JSON body")

    _stop = field_validator("stop", mode="before")(lambda cls, v: _one_or_many(v))

    def to_engine(self, rid: str, deadline: float) -> EngineRequest:
        return EngineRequest(
            rid=rid,
            model=self.model,
            prompts=(self.prompt,),
            n=self.n,
            temperature=self.temperature,
            top_k=self.top_k,
            top_p=self.top_p,
            seed=self.seed,
            max_new_tokens=self.max_new_tokens,
            stop=tuple(self.stop or ()),
            stream=self.stream,
            deadline=deadline,
        )


class CompletionRequest(BaseModel):
    """POST /v1/completions: OpenAI's legacy completions request; unsupported options must stay default."""

    model_config = _STRICT

    model: str = Field(min_length=1)
    prompt: str | Annotated[list[str], Field(min_length=1, max_length=MAX_CHOICES)] = ""
    max_tokens: int | None = Field(None, ge=1, le=MAX_NEW_TOKENS_CAP, description="default as max_new_tokens")
    temperature: float | None = Field(1.0, ge=0, allow_inf_nan=False)
    top_p: float | None = Field(1.0, gt=0, le=1, allow_inf_nan=False)
    n: int | None = Field(1, ge=1, le=MAX_CHOICES)
    stop: Stop = None
    seed: int | None = Field(None, ge=SEED_MIN, le=SEED_MAX)
    stream: bool | None = False
    stream_options: dict[str, Any] | None = Field(None, description="accepted; usage is always sent")
    echo: bool | None = Field(False, description="prepend the prompt to each choice's text")
    user: str | None = Field(None, description="ignored")
    top_k: int | None = Field(None, ge=1, description="extension: not an OpenAI field")
    logprobs: int | None = None
    suffix: str | None = None
    best_of: int | None = None
    presence_penalty: float | None = 0.0
    frequency_penalty: float | None = 0.0
    logit_bias: dict[str, Any] | None = None

    _stop = field_validator("stop", mode="before")(lambda cls, v: _one_or_many(v))

    @field_validator("prompt", mode="before")
    @classmethod
    def _text_prompt(cls, value: object) -> object:
        if isinstance(value, list):
            if not value:
                raise PydanticCustomError("too_short", "a prompt list must not be empty")
            if not all(isinstance(p, str) for p in value):
                raise _unsupported("a token-id prompt", "send text")
        return value

    @field_validator("logprobs")
    @classmethod
    def _no_logprobs(cls, value: int | None) -> int | None:
        if value is not None:
            raise _unsupported("logprobs", "leave it null")
        return value

    @field_validator("suffix")
    @classmethod
    def _no_suffix(cls, value: str | None) -> str | None:
        if value:
            raise _unsupported("suffix", "leave it null")
        return value

    @field_validator("presence_penalty", "frequency_penalty")
    @classmethod
    def _no_penalty(cls, value: float | None) -> float | None:
        if value:
            raise _unsupported("penalties", "leave them at 0")
        return value

    @field_validator("logit_bias")
    @classmethod
    def _no_bias(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value:
            raise _unsupported("logit_bias", "leave it null")
        return value

    @field_validator("stream_options")
    @classmethod
    def _stream_options(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value and set(value) - {"include_usage", "include_obfuscation"}:
            raise _unsupported("stream_options other than include_usage", "leave them out")
        return value

    @field_validator("n")
    @classmethod
    def _choices(cls, value: int | None, info: ValidationInfo) -> int | None:
        prompt = info.data.get("prompt", "")
        total = (1 if isinstance(prompt, str) else len(prompt)) * (value or 1)
        if total > MAX_CHOICES:
            raise PydanticCustomError("too_many_choices", f"prompts x n must be at most {MAX_CHOICES}, got {total}")
        return value

    @field_validator("best_of")
    @classmethod
    def _best_of(cls, value: int | None, info: ValidationInfo) -> int | None:
        if value is not None and value not in (1, info.data.get("n") or 1):
            raise _unsupported("best_of", "leave it null (or equal to n)")
        return value

    @property
    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)

    def to_engine(self, rid: str, deadline: float) -> EngineRequest:
        return EngineRequest(
            rid=rid,
            model=self.model,
            prompts=tuple(self.prompts),
            n=self.n or 1,
            temperature=1.0 if self.temperature is None else self.temperature,
            top_k=self.top_k,
            top_p=1.0 if self.top_p is None else self.top_p,
            seed=self.seed,
            max_new_tokens=self.max_tokens,
            stop=tuple(self.stop or ()),
            stream=bool(self.stream),
            deadline=deadline,
        )


# ----- responses: the gateway builds every body by instantiating these -----


class GenerateChoice(BaseModel):
    index: int
    text: str = Field(description="prompt + generated text")
    finish_reason: FinishReason


class GenerateUsage(BaseModel):
    prompt_tokens: int
    completion_tokens: int


class Timing(BaseModel):
    queue_ms: float = Field(description="admission to the start of its batch")
    first_token_ms: float = Field(description="admission to the first generated character")
    total_ms: float = Field(description="admission to the last character")


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


class GenerateChunk(BaseModel):
    """One SSE event of /v1/generate; the last one has every finish_reason, `usage` and `timing`."""

    id: str
    model: str
    choices: list[GenerateStreamChoice]
    usage: GenerateUsage | None = None
    timing: Timing | None = None


class CompletionChoice(BaseModel):
    text: str
    index: int
    logprobs: None = None
    finish_reason: FinishReason


class CompletionUsage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


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
    logprobs: None = None
    finish_reason: FinishReason | None = None


class CompletionChunk(BaseModel):
    """One SSE event of /v1/completions (OpenAI's text_completion chunk); usage only on the last."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionStreamChoice]
    usage: CompletionUsage | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: Literal["charlm"] = "charlm"
    arch: str
    n_params: int
    vocab_size: int
    block_size: int
    format: Literal["lines", "stream"]
    test_loss: float
    backend: str


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail
