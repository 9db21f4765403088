"""One sequence's text and stop logic; tokens are single characters, which keeps both simple."""

from __future__ import annotations

from collections.abc import Hashable

from service.engine.types import Delta, FinishReason


class Sequence:
    """Turns sampled tokens into `Delta`s: the boundary ends a `lines` sample, stop strings end any
    sample and are left out of its text (OpenAI semantics), text that may still grow into a stop string
    is held back until it is resolved, and `max_new` tokens end it with "length"."""

    __slots__ = (
        "boundary",
        "emitted",
        "finish_reason",
        "max_new",
        "n_tokens",
        "prompt_tokens",
        "request_id",
        "stops",
        "text",
    )

    def __init__(
        self,
        request_id: Hashable,
        prompt_tokens: int,
        max_new: int,
        stops: tuple[str, ...],
        boundary: int | None,
    ):
        self.request_id = request_id
        self.prompt_tokens = prompt_tokens
        self.max_new = max_new
        self.stops = tuple(s for s in stops if s)
        self.boundary = boundary
        self.text = ""
        self.emitted = 0
        self.n_tokens = 0
        self.finish_reason: FinishReason | None = None

    def push(self, token: int, char: str) -> Delta | None:
        """Take one sampled token; the delta of text now safe to show (or the final one), if any."""
        self.n_tokens += 1
        if token == self.boundary:
            return self._finish("stop")
        self.text += char
        for stop in self.stops:
            # A new occurrence must end at the character just added: endswith is the whole check.
            if self.text.endswith(stop):
                self.text = self.text[: -len(stop)]
                return self._finish("stop")
        if self.n_tokens >= self.max_new:
            return self._finish("length")
        end = len(self.text) - self._held_back() if self.stops else len(self.text)
        if end <= self.emitted:
            return None
        delta = Delta(self.request_id, self.text[self.emitted : end], None)
        self.emitted = end
        return delta

    def _held_back(self) -> int:
        """Length of the longest tail of the text that could still grow into a stop string."""
        held = 0
        for stop in self.stops:
            for k in range(min(len(stop) - 1, len(self.text)), held, -1):
                if self.text.endswith(stop[:k]):
                    held = k
                    break
        return held

    def _finish(self, reason: FinishReason) -> Delta:
        self.finish_reason = reason
        delta = Delta(self.request_id, self.text[self.emitted :], reason, self.n_tokens)
        self.emitted = len(self.text)
        return delta
