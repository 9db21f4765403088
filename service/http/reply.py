"""Response bodies and SSE events of the three generation routes, built from the `bodies` models.

/v1/generate's `text` is the prompt plus the generated characters; /v1/completions' is only the
completion unless `echo`; chat's is the reply. Streaming, a shape turns the worker's events into
chunks: `opening` (when a worker took the request), `chunk` (each ChoiceDelta) and `closing` (the
Final). On the OpenAI routes usage is streamed as OpenAI does: only with `stream_options.include_usage`,
then as one last chunk with `choices: []` (the other chunks carry `usage: null`), or on every chunk
with vLLM's `continuous_usage_stats`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from service.http import logprobs as scores
from service.http.bodies import (
    ChatChoice,
    ChatChunk,
    ChatDelta,
    ChatMessage,
    ChatResponse,
    ChatStreamChoice,
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


def _dump(model: Any, keep_usage: bool = False) -> dict[str, Any]:
    body = model.model_dump()
    for key in ("usage", "timing"):
        if key in body and body[key] is None and not (key == "usage" and keep_usage):
            del body[key]
    return body


def _head(r: Reply, i: int, d: ChoiceDelta) -> str:
    """The prompt, when this delta carries its scores and the choice shows it."""
    return r.req.prompt_of(i) if r.echo and d.prompt_logprobs is not None else ""


def _full_text(r: Reply, i: int, c: ChoiceResult) -> str:
    return (r.req.prompt_of(i) if r.echo else "") + (c.text or "")


class GenerateShape:
    """POST /v1/generate: native shapes (`text` starts with the prompt)."""

    api_path = "/v1/generate"
    prefix = "gen-"

    @staticmethod
    def full(r: Reply, final: Final, timing: Timing) -> dict[str, Any]:
        choices = [
            GenerateChoice(
                index=i,
                text=_full_text(r, i, c),
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
            GenerateShape._event(r, i, r.req.prompt_of(i), None) for i in range(r.req.choices) if r.req.prompt_of(i)
        ]

    @staticmethod
    def chunk(r: Reply, d: ChoiceDelta, completion_tokens: int) -> dict[str, Any]:
        return GenerateShape._event(
            r, d.index, _head(r, d.index, d) + d.text, r.legacy(d.index, d.logprobs, d.prompt_logprobs, d.boundary)
        )

    @staticmethod
    def _event(r: Reply, i: int, text: str, logprobs: Any) -> dict[str, Any]:
        choice = GenerateStreamChoice(index=i, text=text, finish_reason=None, logprobs=logprobs)
        body = _dump(GenerateChunk(id=r.req.rid, model=r.req.model, choices=[choice]))
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
        body = _dump(GenerateChunk(id=r.req.rid, model=r.req.model, choices=choices, usage=usage, timing=timing))
        for c in body["choices"]:
            del c["logprobs"]
        return [body]


class CompletionShape:
    """POST /v1/completions: OpenAI's text_completion shapes."""

    api_path = "/v1/completions"
    prefix = "cmpl-"

    @staticmethod
    def full(r: Reply, final: Final, timing: Timing) -> dict[str, Any]:
        choices = [
            CompletionChoice(
                text=_full_text(r, i, c),
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
        return _dump(chunk, keep_usage=r.include_usage)

    @staticmethod
    def opening(r: Reply) -> list[dict[str, Any]]:
        if not r.echo or r.logprobs:
            return []
        return [
            CompletionShape._event(r, [CompletionStreamChoice(text=r.req.prompt_of(i), index=i)], _so_far(r, 0))
            for i in range(r.req.choices)
            if r.req.prompt_of(i)
        ]

    @staticmethod
    def chunk(r: Reply, d: ChoiceDelta, completion_tokens: int) -> dict[str, Any]:
        i = d.index
        logprobs = r.legacy(i, d.logprobs, d.prompt_logprobs, d.boundary)
        choice = CompletionStreamChoice(text=_head(r, i, d) + d.text, index=i, logprobs=logprobs)
        return CompletionShape._event(r, [choice], _so_far(r, completion_tokens))

    @staticmethod
    def closing(r: Reply, final: Final, timing: Timing) -> list[dict[str, Any]]:
        usage = r.usage(final.prompt_tokens, final.completion_tokens)
        choices = [
            CompletionStreamChoice(text="", index=i, finish_reason=c.finish_reason, novel=c.novel)
            for i, c in enumerate(final.choices)
        ]
        events = [CompletionShape._event(r, choices, usage if r.continuous_usage else None)]
        if r.include_usage:
            events.append(CompletionShape._event(r, [], usage))
        return events


class ChatShape:
    """POST /v1/chat/completions: OpenAI's chat.completion shapes (the reply only, never the prompt)."""

    api_path = "/v1/chat/completions"
    prefix = "chatcmpl-"

    @staticmethod
    def _logprobs(r: Reply, i: int, lps: Any, boundary: Any) -> Any:
        return scores.chat(r.vocab, r.pieces(i, lps, None, boundary)) if r.logprobs else None

    @staticmethod
    def full(r: Reply, final: Final, timing: Timing) -> dict[str, Any]:
        choices = [
            ChatChoice(
                index=i,
                message=ChatMessage(content=c.text or ""),
                logprobs=ChatShape._logprobs(r, i, c.logprobs, c.boundary),
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
        return _dump(chunk, keep_usage=r.include_usage)

    @staticmethod
    def opening(r: Reply) -> list[dict[str, Any]]:
        return [
            ChatShape._event(
                r, [ChatStreamChoice(index=i, delta=ChatDelta(role="assistant", content=""))], _so_far(r, 0)
            )
            for i in range(r.req.choices)
        ]

    @staticmethod
    def chunk(r: Reply, d: ChoiceDelta, completion_tokens: int) -> dict[str, Any]:
        choice = ChatStreamChoice(
            index=d.index,
            delta=ChatDelta(content=d.text),
            logprobs=ChatShape._logprobs(r, d.index, d.logprobs, d.boundary),
        )
        return ChatShape._event(r, [choice], _so_far(r, completion_tokens))

    @staticmethod
    def closing(r: Reply, final: Final, timing: Timing) -> list[dict[str, Any]]:
        usage = r.usage(final.prompt_tokens, final.completion_tokens)
        choices = [
            ChatStreamChoice(index=i, delta=ChatDelta(), finish_reason=c.finish_reason)
            for i, c in enumerate(final.choices)
        ]
        events = [ChatShape._event(r, choices, usage if r.continuous_usage else None)]
        if r.include_usage:
            events.append(ChatShape._event(r, [], usage))
        return events


def _so_far(r: Reply, completion_tokens: int) -> CompletionUsage | None:
    """vLLM's continuous usage: the prompt and the tokens generated so far, on every chunk."""
    if not r.continuous_usage:
        return None
    prompt = sum(len(p) for p in r.req.prompts)
    return r.usage(prompt, completion_tokens)


Shape = type[GenerateShape] | type[CompletionShape] | type[ChatShape]
