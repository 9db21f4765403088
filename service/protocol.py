"""What crosses between the HTTP side and the workers, and the request rules both sides share.

One `EngineRequest` (frozen, picklable, plain data) is the only thing an API server puts on LitServe's
request queue; a worker answers with the typed events below, in this order: `Accepted` (streamed
requests only, so a stream starts only once a worker took the request), `Chunk`s (streamed text),
then exactly one `Final` or `Failed`. Nothing here imports numpy or LitServe (only the engine's cheap
value types), so the API servers stay light; the limits are the ones `schemas.py` validates and the
worker enforces.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from contract import Manifest
from engine import FinishReason, SamplingParams, TokenLogprob, default_max_new_tokens

MAX_CHOICES = 64  # prompts x n (x best_of) per request
# prompts x samples x max tokens one request may ask for, by default (--max-request-tokens)
MAX_REQUEST_TOKENS = 32768
MAX_STOP = 4
# novel_only: attempts per choice in all, so a choice costs at most this many times its tokens; why 16 is
# enough at temperature 1, and what a low temperature gets back, is in docs/api.md (`novel_only`).
MAX_ATTEMPTS = 16


@dataclass(frozen=True)
class EngineRequest:
    """One admitted request: its prompts, n samples of each, how to sample, and when it must end.

    `sampling` is the engine's own type, built once from the HTTP body or the CLI's flags
    (service.http.prompts.sampling_params). Choice i samples prompt i // n with seed
    derive_seed(sampling.seed, i) (with `novel_only`, its attempt k >= 1 with
    derive_seed(seed, k << 32 | i): scheduler.sampling). `deadline` is on the monotonic clock,
    which every process of the server shares.
    """

    rid: str
    model: str
    prompts: tuple[str, ...]
    sampling: SamplingParams = field(default_factory=SamplingParams)  # every choice's, but for its seed
    n: int = 1
    stream: bool = False
    deadline: float = float("inf")
    best_of: int | None = None  # sample best_of per prompt, keep the n with the highest summed logprob
    novel_only: bool = False  # a `lines` sample found in the model's data is sampled again (scheduler.py)
    request_id: str | None = None  # the HTTP request's x-request-id, so worker-side log lines name it

    @property
    def samples(self) -> int:
        """Sequences run per prompt: best_of when it asks for more than n."""
        return max(self.n, self.best_of or 0)

    @property
    def choices(self) -> int:
        """Choices answered: prompts x n."""
        return len(self.prompts) * self.n

    @property
    def sequences(self) -> int:
        """Engine sequences run: prompts x samples."""
        return len(self.prompts) * self.samples

    def prompt_of(self, choice: int) -> str:
        return self.prompts[choice // self.n]

    def cost_tokens(self, manifest: Manifest) -> int:
        """The most tokens it can take: what admission by cost weighs (a scored prompt counts as one)."""
        asked = self.sampling.max_new_tokens
        budget = default_max_new_tokens(manifest) if asked is None else asked
        return self.sequences * max(1, budget)


# ----- worker -> API server -----


@dataclass(frozen=True)
class Accepted:
    """A worker took the request (sent for streamed requests: the 200 goes out only then)."""

    t_start: float


@dataclass(frozen=True)
class ChoiceDelta:
    """New text of one choice. With logprobs: one score per character of `text`, the prompt's scores
    on the choice's first delta (None where the model saw no context), and the end-of-sample boundary
    of a `lines` model where it was sampled (it ends the choice and is never part of the text)."""

    index: int
    text: str
    logprobs: tuple[TokenLogprob, ...] | None = None
    prompt_logprobs: tuple[TokenLogprob | None, ...] | None = None
    boundary: TokenLogprob | None = None


@dataclass(frozen=True)
class Chunk:
    """New text of some choices, in order; `completion_tokens`: generated so far, over all choices."""

    deltas: tuple[ChoiceDelta, ...]
    completion_tokens: int = 0


@dataclass(frozen=True)
class ChoiceResult:
    """How one choice ended; `text` is None for a streamed request (its text went out in Chunks), and
    so are the scores (`logprobs`, `prompt_logprobs`, `boundary`: as in ChoiceDelta)."""

    text: str | None
    finish_reason: FinishReason
    completion_tokens: int
    logprobs: tuple[TokenLogprob, ...] | None = None
    prompt_logprobs: tuple[TokenLogprob | None, ...] | None = None
    boundary: TokenLogprob | None = None
    novel: bool | None = None  # a `lines` sample that ended at its boundary: not in the model's data


@dataclass(frozen=True)
class Final:
    """Every choice ended. Times are monotonic: start of generation, first token, last token."""

    t_start: float
    t_first: float
    t_end: float
    prompt_tokens: int
    choices: tuple[ChoiceResult, ...] = field(default=())
    sampled_tokens: int | None = None  # every token sampled (best_of's unkept samples too)

    @property
    def completion_tokens(self) -> int:
        if self.sampled_tokens is not None:
            return self.sampled_tokens
        return sum(c.completion_tokens for c in self.choices)


@dataclass(frozen=True)
class Failed:
    """The worker refused or lost the request; the fields of the error body."""

    status: int
    message: str
    code: str | None = None
    param: str | None = None


WorkerEvent = Accepted | Chunk | Final | Failed
