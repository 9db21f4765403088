"""Response bodies of the HTTP API, as pydantic models: the gateway builds every body by instantiating
these, so the OpenAPI document describes exactly what the server sends."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field

from engine import FinishReason

# Extension on `lines` models that carry their data's hashes; left out of the JSON when there is no mark.
Novel = Annotated[
    bool | None,
    Field(
        exclude_if=lambda v: v is None,
        description="the sample (prompt + text) ended at its boundary and is not in the training data "
        "(false: the model reproduced a training sample)",
    ),
]


class CompletionLogprobs(BaseModel):
    """OpenAI's legacy logprobs: one entry per token (a character; a `lines` model's boundary mark
    where it was sampled, never part of the text). `null` where the model saw no context."""

    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int]


class GenerateChoice(BaseModel):
    index: int
    text: str = Field(description="prompt + generated text")
    finish_reason: FinishReason
    logprobs: CompletionLogprobs | None = None
    novel: Novel = None


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
    logprobs: CompletionLogprobs | None = None
    novel: Novel = None


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
    logprobs: CompletionLogprobs | None = None
    finish_reason: FinishReason
    novel: Novel = None


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


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int]


class ChatTokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChatLogprobs(BaseModel):
    content: list[ChatTokenLogprob]


class ChatMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int
    message: ChatMessage
    logprobs: ChatLogprobs | None = None
    finish_reason: FinishReason


class ChatResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: CompletionUsage


class ChatDelta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatStreamChoice(BaseModel):
    index: int
    delta: ChatDelta
    logprobs: ChatLogprobs | None = None
    finish_reason: FinishReason | None = None


class ChatChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatStreamChoice]
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
    precision: Literal["float32", "int8"] = "float32"


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
