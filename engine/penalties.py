"""Per-slot logits adjustments: logit_bias, repetition / presence / frequency penalties, min_tokens.

Definitions as clients expect them: OpenAI's presence and frequency penalties count the generated
tokens (`logit -= frequency * count + presence * (count > 0)`); vLLM's and Hugging Face's repetition
penalty divides the positive logits (multiplies the negative ones) of every token seen in the prompt or
the output; `logit_bias` is added as given. With vocabularies of 27-65 characters the state is a few
small [slots, vocab] arrays, and rows that ask for none of this cost nothing.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from engine.types import SamplingParams


class Penalties:
    def __init__(self, slots: int, vocab_size: int, boundary: int | None):
        self.boundary = boundary
        self.active = np.zeros(slots, dtype=bool)
        self.bias = np.zeros((slots, vocab_size), dtype=np.float32)
        self.repetition = np.ones(slots, dtype=np.float32)
        self.presence = np.zeros(slots, dtype=np.float32)
        self.frequency = np.zeros(slots, dtype=np.float32)
        self.counts = np.zeros((slots, vocab_size), dtype=np.int32)  # generated tokens
        self.seen = np.zeros((slots, vocab_size), dtype=bool)  # prompt and generated tokens
        self.min_tokens = np.zeros(slots, dtype=np.int64)
        self.generated = np.zeros(slots, dtype=np.int64)

    def set(self, row: int, params: SamplingParams, prompt_ids: Sequence[int]) -> None:
        self.active[row] = params.adjusts_logits
        self.bias[row] = 0
        for token, value in params.logit_bias:
            self.bias[row, token] = value
        self.repetition[row] = params.repetition_penalty
        self.presence[row] = params.presence_penalty
        self.frequency[row] = params.frequency_penalty
        self.counts[row] = 0
        self.seen[row] = False
        self.seen[row, list(prompt_ids)] = True
        self.min_tokens[row] = params.min_tokens
        self.generated[row] = 0

    def move(self, src: int, dst: int) -> None:
        for arr in (self.active, self.bias, self.repetition, self.presence, self.frequency, self.counts, self.seen):
            arr[dst] = arr[src]
        self.min_tokens[dst], self.generated[dst] = self.min_tokens[src], self.generated[src]

    def apply(self, slots: np.ndarray, logits: np.ndarray) -> np.ndarray:
        """Logits of `slots` (logits[i] is slot slots[i]'s) as sampling sees them (the input is left
        untouched)."""
        at = np.flatnonzero(self.active[slots])
        if not at.size:
            return logits
        rows = slots[at]
        out = logits.copy()
        x = out[at] + self.bias[rows]
        rep = self.repetition[rows, None]
        x = np.where(self.seen[rows], np.where(x > 0, x / rep, x * rep), x)
        counts = self.counts[rows]
        x -= self.frequency[rows, None] * counts + self.presence[rows, None] * (counts > 0)
        if self.boundary is not None:
            early = self.generated[rows] < self.min_tokens[rows]
            x[early, self.boundary] = -np.inf
        out[at] = x
        return out

    def record(self, slots: np.ndarray, tokens: np.ndarray) -> None:
        """The tokens just sampled for `slots`."""
        at = np.flatnonzero(self.active[slots])
        if at.size:
            rows, picked = slots[at], tokens[at]
            self.counts[rows, picked] += 1
            self.seen[rows, picked] = True
            self.generated[rows] += 1
