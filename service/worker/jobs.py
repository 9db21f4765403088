"""What a worker keeps of one admitted request while its sequences run: `Job` and each `SeqState`,
and how they become the `Final` (best_of's pick included)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from engine import TokenLogprob
from service.protocol import ChoiceDelta, ChoiceResult, EngineRequest, Final


@dataclass(eq=False)
class Job:
    """One admitted request on this worker and what its sequences produced so far (one sequence per
    choice, or best_of per prompt: then the n best by summed logprob become the choices at the end)."""

    req: EngineRequest
    uid: Any
    rqid: int
    t_start: float
    prompt_tokens: int
    prompt_ids: list[list[int]] = field(default_factory=list)  # per prompt: what a resampled choice restarts from
    t_first: float | None = None
    seqs: list[SeqState] = field(default_factory=list)
    remaining: int = 0
    chunk: list[ChoiceDelta] = field(default_factory=list)
    sent: int = 0  # completion tokens streamed so far (continuous usage)
    done: bool = False

    def __post_init__(self) -> None:
        self.seqs = [SeqState() for _ in range(self.req.sequences)]
        self.remaining = len(self.seqs)

    def final(self, now: float, is_novel: Callable[[str], bool | None] | None = None) -> Final:
        """The request's end; `is_novel(prompt + text)` marks each `lines` sample that ended at its
        boundary as new or seen in the model's data."""
        req = self.req
        pairs = [(req.prompts[i // req.samples], s) for i, s in enumerate(self.seqs)]
        if req.samples > req.n:  # best_of: per prompt, the n samples with the highest summed logprob
            picked = []
            for p in range(len(req.prompts)):
                group = pairs[p * req.samples : (p + 1) * req.samples]
                picked += sorted(group, key=lambda ps: -ps[1].score())[: req.n]
            pairs = picked
        choices = tuple(
            s.result(
                req.stream,
                req.sampling.logprobs is not None,
                is_novel(prompt + s.text) if is_novel is not None and s.finish == "stop" else None,
            )
            for prompt, s in pairs
        )
        tokens = sum(s.tokens + s.spent for s in self.seqs)  # every sampled token: best_of's, discarded attempts
        return Final(self.t_start, self.t_first or now, now, self.prompt_tokens, choices, tokens)


@dataclass(eq=False)
class SeqState:
    """One sequence's current attempt (novel_only discards an attempt that copied its data)."""

    text: str = ""
    finish: str | None = None
    tokens: int = 0
    lps: list[TokenLogprob] = field(default_factory=list)
    prompt_lps: tuple[TokenLogprob | None, ...] | None = None
    boundary: TokenLogprob | None = None
    attempt: int = 0
    spent: int = 0  # tokens of discarded attempts: paid for, never shown

    def restart(self, tokens: int) -> None:
        """Discard this attempt (`tokens` long) and start the next one from the prompt."""
        self.spent += tokens
        self.attempt += 1
        self.text, self.lps, self.prompt_lps, self.boundary = "", [], None, None

    def score(self) -> float:
        return sum(t.logprob for t in self.lps) + (self.boundary.logprob if self.boundary else 0.0)

    def result(self, stream: bool, with_lps: bool, novel: bool | None = None) -> ChoiceResult:
        if stream:
            return ChoiceResult(None, self.finish or "length", self.tokens, novel=novel)  # type: ignore[arg-type]
        return ChoiceResult(
            self.text,
            self.finish or "length",  # type: ignore[arg-type]
            self.tokens,
            tuple(self.lps) if with_lps else None,
            self.prompt_lps if with_lps else None,
            self.boundary if with_lps else None,
            novel,
        )


def score_of(lp: Any) -> TokenLogprob | None:
    """The engine's TokenLogprob as the protocol's TokenLogprob."""
    return None if lp is None else TokenLogprob(lp.token, lp.logprob, tuple(lp.top))
