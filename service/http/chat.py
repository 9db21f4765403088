"""/v1/chat/completions for character models: how messages become the model's text (docs/api.md).

- `stream` models (Shakespeare): every message is a speaker block `NAME:\\n<content>\\n\\n`, NAME being
  the message's `name` or else its role, upper-cased (`USER`, `ASSISTANT`, `SYSTEM`); the prompt ends
  with the reply's speaker line (the `name` of the last assistant message, or `ASSISTANT`), and the
  reply is what the model writes up to the end of its block (a blank line: the stop string "\\n\\n").
- `lines` models (names): the last user message is the prompt; the reply is the rest of the sample,
  up to the model's end marker. Every user message must be a prompt the model can take (the OpenAPI
  document says so of each; which one is last is beyond a schema).

Characters outside the vocabulary in a message are a 400 naming `messages[i].content` (or `.name`).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema, field_validator

from contract import Manifest
from engine import FinishReason, prompt_problem, vocabulary_problem
from service.errors import APIError
from service.http import logprobs as scores
from service.http.bodies import ChatLogprobs, CompletionUsage, Timing
from service.http.prompts import Prepared, check_logprobs, engine_request, logit_bias, text_prompts
from service.http.reply import Reply, dump, openai_closing, so_far
from service.http.sampling import OpenAIFields, OptInt, _unsupported
from service.protocol import ChoiceDelta, Final

SPEAKER_END = "\n\n"
DEFAULT_SPEAKER = "ASSISTANT"


class TextPart(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: Literal["text"]
    text: str


class Message(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = Field(None, min_length=1, max_length=64)

    @property
    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(p.text for p in self.content)
        return self.content or ""


_NO_TOOLS = "tool calling is not supported: empty or left out"
_NONE_OF_THEM: dict[str, Any] = {"maxItems": 0}
_TOOL_CHOICE = {"anyOf": [{"type": "string", "enum": ["none", "auto"]}, {"type": "null"}]}
_RESPONSE_FORMAT = {
    "anyOf": [
        {"type": "object", "properties": {"type": {"anyOf": [{"type": "string", "const": "text"}, {"type": "null"}]}}},
        {"type": "null"},
    ],
    "description": "text only",
}


class ChatRequest(OpenAIFields):
    """POST /v1/chat/completions."""

    messages: list[Message] = Field(min_length=1)
    logprobs: bool | None = Field(False, description="the reply's logprobs, in the chat shape")
    top_logprobs: OptInt = Field(None, ge=0, description="alternatives per token: 0-20 (OpenAI), up to the vocabulary")
    tools: list[Any] | None = Field(None, json_schema_extra=_NONE_OF_THEM, description=_NO_TOOLS)
    tool_choice: Annotated[Any, WithJsonSchema(_TOOL_CHOICE)] = None
    functions: list[Any] | None = Field(None, json_schema_extra=_NONE_OF_THEM, description=_NO_TOOLS)
    response_format: Annotated[dict[str, Any] | None, WithJsonSchema(_RESPONSE_FORMAT)] = None

    @field_validator("tools", "functions")
    @classmethod
    def _no_tools(cls, value: list[Any] | None) -> list[Any] | None:
        if value:
            raise _unsupported("tool calling", "leave tools out")
        return value

    @field_validator("tool_choice")
    @classmethod
    def _no_tool_choice(cls, value: Any) -> Any:
        if value not in (None, "none", "auto"):
            raise _unsupported("tool_choice", "leave it out")
        return value

    @field_validator("response_format")
    @classmethod
    def _text_only(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value and value.get("type") not in (None, "text"):
            raise _unsupported("response_format other than text", "leave it out")
        return value


def _check(manifest: Manifest, text: str, param: str) -> None:
    problem = vocabulary_problem(manifest, text, param)
    if problem:
        raise APIError(400, problem, param=param, code="invalid_prompt")


def render(manifest: Manifest, messages: list[Message]) -> tuple[str, tuple[str, ...]]:
    """The prompt the messages make for this model, and the stop strings that end the reply."""
    if manifest.format == "lines":
        users = [(i, m) for i, m in enumerate(messages) if m.role == "user"]
        for i, m in users:  # every user message could be a prompt: the document says so of each
            problem = prompt_problem(manifest, m.text)
            if problem:
                raise APIError(
                    400,
                    problem.replace("prompt", f"messages[{i}].content", 1),
                    param=f"messages[{i}].content",
                    code="invalid_prompt",
                )
        return (users[-1][1].text if users else ""), ()
    blocks, speaker = [], DEFAULT_SPEAKER
    for i, m in enumerate(messages):
        name = (m.name or m.role).upper()
        _check(manifest, name, f"messages[{i}].name" if m.name else f"messages[{i}].role")
        _check(manifest, m.text, f"messages[{i}].content")
        blocks.append(f"{name}:\n{m.text.strip(chr(10))}{SPEAKER_END}")
        if m.role == "assistant" and m.name:
            speaker = m.name.upper()
    return "".join(blocks) + f"{speaker}:\n", (SPEAKER_END,)


def prepare_chat(body: ChatRequest, manifest: Manifest, rid: str, deadline: float) -> Prepared:
    novel_only = (body.model_extra or {}).get("novel_only")
    if novel_only is not None and novel_only is not False:  # chat has no `novel` mark to show either
        raise APIError(
            400, "novel_only is not supported on /v1/chat/completions", param="novel_only", code="invalid_value"
        )
    prompt, stops = render(manifest, body.messages)
    texts, _ = text_prompts(manifest, [prompt])
    k = (body.top_logprobs or 0) if body.logprobs else None
    check_logprobs(manifest, body.top_logprobs, "top_logprobs")
    # ignore_eos lifts the reply's implicit end (the speaker's blank line) as it lifts a names model's mark
    implicit = () if body.ignore_eos else stops
    params = body.sampling_params(
        logit_bias=logit_bias(manifest, body),
        max_new_tokens=body.budget,
        logprobs=k,
        stop=tuple(dict.fromkeys((*(body.stop or ()), *implicit))),
    )
    req = engine_request(body, rid, deadline, texts, params)
    return Prepared(req, (False,), echo=False)


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


class ChatRoute:
    """POST /v1/chat/completions: OpenAI's chat.completion shapes (the reply only, never the prompt)."""

    path = "/v1/chat/completions"
    prefix = "chatcmpl-"
    request = ChatRequest
    response = ChatResponse
    budget_param = "max_tokens"
    summary = "OpenAI's /v1/chat/completions"
    description = "The character-model mapping of messages is in docs/api.md."
    prepare = staticmethod(prepare_chat)

    @staticmethod
    def _logprobs(r: Reply, i: int, lps: Any, boundary: Any) -> Any:
        return scores.chat(r.vocab, r.pieces(i, lps, None, boundary)) if r.logprobs else None

    @staticmethod
    def full(r: Reply, final: Final, timing: Timing) -> dict[str, Any]:
        choices = [
            ChatChoice(
                index=i,
                message=ChatMessage(content=c.text or ""),
                logprobs=ChatRoute._logprobs(r, i, c.logprobs, c.boundary),
                finish_reason=c.finish_reason,
            )
            for i, c in enumerate(final.choices)
        ]
        usage = r.usage(final.prompt_tokens, final.completion_tokens)
        return ChatResponse(
            id=r.req.rid, created=r.created, model=r.req.model, choices=choices, usage=usage
        ).model_dump()

    @staticmethod
    def _event(r: Reply, choices: list[ChatStreamChoice], usage: CompletionUsage | None) -> dict[str, Any]:
        chunk = ChatChunk(id=r.req.rid, created=r.created, model=r.req.model, choices=choices, usage=usage)
        return dump(chunk, keep_usage=r.include_usage)

    @staticmethod
    def opening(r: Reply) -> list[dict[str, Any]]:
        return [
            ChatRoute._event(
                r, [ChatStreamChoice(index=i, delta=ChatDelta(role="assistant", content=""))], so_far(r, 0)
            )
            for i in range(r.req.choices)
        ]

    @staticmethod
    def chunk(r: Reply, d: ChoiceDelta, completion_tokens: int) -> dict[str, Any]:
        choice = ChatStreamChoice(
            index=d.index,
            delta=ChatDelta(content=d.text),
            logprobs=ChatRoute._logprobs(r, d.index, d.logprobs, d.boundary),
        )
        return ChatRoute._event(r, [choice], so_far(r, completion_tokens))

    @staticmethod
    def closing(r: Reply, final: Final, timing: Timing) -> list[dict[str, Any]]:
        choices = [
            ChatStreamChoice(index=i, delta=ChatDelta(), finish_reason=c.finish_reason)
            for i, c in enumerate(final.choices)
        ]
        return openai_closing(r, ChatRoute._event, choices, final)
