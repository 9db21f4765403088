"""Response models the routes share (usage, timing, logprobs, models, errors), as pydantic models: every
body is built by instantiating these or a family's own (generate, completions, chat), so the OpenAPI
document describes exactly what the server sends."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field

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


class Timing(BaseModel):
    queue_ms: float = Field(description="admission to the start of its batch")
    first_token_ms: float = Field(description="admission to the first generated character")
    total_ms: float = Field(description="admission to the last character")


class CompletionUsage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int]


class ChatTokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChatLogprobs(BaseModel):
    content: list[ChatTokenLogprob]


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
