"""One sequence's text and stop logic; tokens are single characters, which keeps both simple."""

from __future__ import annotations

from collections.abc import Hashable

from engine.types import Delta, FinishReason, SamplingParams, TokenLogprob


class Sequence:
    """Turns sampled tokens into `Delta`s: the boundary ends a `lines` sample (unless `ignore_eos`), stop
    strings end any sample and are left out of its text (OpenAI semantics), text that may still grow
    into a stop string is held back until it is resolved, and `max_new` tokens end it with "length".
    Log-probabilities, when asked for, travel with their characters: held back, cut and sent alike."""

    __slots__ = (
        "boundary",
        "emitted",
        "finish_reason",
        "lps",
        "max_new",
        "min_tokens",
        "n_tokens",
        "plain",
        "prompt_lps",
        "prompt_tokens",
        "request_id",
        "stops",
        "text",
        "want_lps",
    )

    def __init__(
        self, request_id: Hashable, prompt_tokens: int, max_new: int, params: SamplingParams, boundary: int | None
    ):
        self.request_id = request_id
        self.prompt_tokens = prompt_tokens
        self.max_new = max_new
        self.stops = tuple(s for s in params.stop if s)
        self.min_tokens = params.min_tokens
        self.boundary = None if params.ignore_eos else boundary
        self.want_lps = params.logprobs is not None
        self.text = ""
        self.lps: list[TokenLogprob] = []
        self.prompt_lps: tuple[TokenLogprob | None, ...] | None = None  # sent with the first delta
        self.emitted = 0
        self.n_tokens = 0
        self.finish_reason: FinishReason | None = None
        self.plain = not self.stops and not self.want_lps and not params.prompt_logprobs

    def push(self, token: int, char: str, lp: TokenLogprob | None = None) -> Delta | None:
        """Take one sampled token; the delta of text now safe to show (or the final one), if any."""
        self.n_tokens += 1
        if token == self.boundary:
            return self._finish("stop", lp)
        self.text += char
        if self.plain:  # no stop strings, logprobs or prompt logprobs: the character is the delta
            if self.n_tokens >= self.max_new:
                return self._finish("length")
            self.emitted += 1
            return Delta(self.request_id, char, None)
        if lp is not None:
            self.lps.append(lp)
        if self.n_tokens >= self.min_tokens:
            for stop in self.stops:
                # A new occurrence must end at the character just added: endswith is the whole check.
                if self.text.endswith(stop):
                    self.text = self.text[: -len(stop)]
                    del self.lps[len(self.text) :]
                    return self._finish("stop")
        if self.n_tokens >= self.max_new:
            return self._finish("length")
        end = len(self.text) - self._held_back() if self.stops else len(self.text)
        if end <= self.emitted and self.prompt_lps is None:
            return None
        return self._delta(end, None)

    def finish_now(self) -> Delta:
        """End without sampling (max_new 0: a prompt scored, nothing generated)."""
        return self._finish("length")

    def _held_back(self) -> int:
        """Length of the longest tail of the text that could still grow into a stop string."""
        held = 0
        for stop in self.stops:
            for k in range(min(len(stop) - 1, len(self.text)), held, -1):
                if self.text.endswith(stop[:k]):
                    held = k
                    break
        return held

    def _finish(self, reason: FinishReason, boundary_lp: TokenLogprob | None = None) -> Delta:
        self.finish_reason = reason
        return self._delta(len(self.text), reason, boundary_lp)

    def _delta(self, end: int, reason: FinishReason | None, boundary_lp: TokenLogprob | None = None) -> Delta:
        start, self.emitted = self.emitted, max(end, self.emitted)
        prompt_lps, self.prompt_lps = self.prompt_lps, None
        return Delta(
            self.request_id,
            self.text[start:end],
            reason,
            self.n_tokens if reason is not None else None,
            tuple(self.lps[start:end]) if self.want_lps else None,
            boundary_lp,
            prompt_lps,
        )
