"""Next-token sampling in numpy, vectorised over the batch, with one RNG per sequence.

numpy and not torch: between two ONNX Runtime calls a torch op wakes torch's thread pool, which fights
ORT's for the same cores (measured 4x slower on 2 cores).
"""

from __future__ import annotations

import numpy as np

from engine.types import SamplingParams

_SEED_MASK = (1 << 64) - 1
# Uniforms a sequence's RNG draws at a time: `random(k)` gives the stream k calls of `random()` give, so a
# seeded text is unchanged, and a step reads its rows' draws with one numpy gather instead of one Python
# call per row.
UNIFORMS = 64


def derive_seed(seed: int | None, index: int) -> int | None:
    """The seed of choice `index` of a request seeded with `seed` (None stays None: fresh entropy).

    Choice 0 keeps the request's seed, so n=1 and the first of n>1 give the same text; the others get
    independent streams from numpy's SeedSequence (not seed + i, whose streams would overlap requests).
    """
    if seed is None:
        return None
    if index < 0:
        raise ValueError(f"index must be >= 0, got {index}")
    if index == 0:
        return seed
    words = np.random.SeedSequence(seed & _SEED_MASK, spawn_key=(index,)).generate_state(2, np.uint32)
    return int(words[0]) << 32 | int(words[1])


def make_rng(seed: int | None) -> np.random.Generator:
    """A sequence's own generator; negative seeds are taken modulo 2**64 (numpy wants them >= 0)."""
    return np.random.default_rng(None if seed is None else seed & _SEED_MASK)


class Sampler:
    """Per-slot sampling settings as arrays, so one call samples a whole batch.

    A slot is set when a sequence takes it and moved when the engine compacts its rows. Every
    non-greedy sequence draws exactly one uniform from its own RNG per token and all arithmetic is
    row-wise: a seeded sequence's text does not depend on what else is in the batch, nor on which
    slot it sits in, nor on who joins or leaves while it runs.
    """

    def __init__(self, slots: int, vocab_size: int):
        self.vocab_size = vocab_size
        self.greedy = np.ones(slots, dtype=bool)
        self.inv_temperature = np.zeros(slots, dtype=np.float64)
        self.top_k = np.full(slots, vocab_size, dtype=np.int64)
        self.top_p = np.full(slots, np.inf, dtype=np.float64)
        self.rngs: list[np.random.Generator | None] = [None] * slots
        self._uniforms = np.zeros((slots, UNIFORMS), dtype=np.float64)  # each row's next draws
        self._next = np.zeros(slots, dtype=np.int64)  # the index of each row's next draw (UNIFORMS: none left)
        # live slots (set and not released) that draw (not greedy), and that cut the distribution
        # (top-k / top-p): a batch with none skips that work, which costs as much as the draw itself at
        # batch 1 (numpy per call)
        self.drawing = 0
        self._cutting = 0

    def set(self, row: int, params: SamplingParams) -> None:
        """Slot `row` now samples with `params` and a fresh RNG from its seed."""
        self.greedy[row] = params.greedy
        self.inv_temperature[row] = 0.0 if params.greedy else 1.0 / params.temperature
        self.top_k[row] = min(params.top_k or self.vocab_size, self.vocab_size)
        # top_p 1 -> inf: no float round-off in the cumulative sum can ever cut a token.
        self.top_p[row] = params.top_p if params.top_p < 1 else np.inf
        self.rngs[row] = None if params.greedy else make_rng(params.seed)
        self._next[row] = UNIFORMS
        self.drawing += not params.greedy
        self._cutting += self._cuts(row)

    def release(self, row: int) -> None:
        """Slot `row`'s sequence is gone (before the engine moves another into it)."""
        self.drawing -= not self.greedy[row]
        self._cutting -= self._cuts(row)

    def _cuts(self, row: int) -> bool:
        return not self.greedy[row] and (self.top_k[row] < self.vocab_size or bool(np.isfinite(self.top_p[row])))

    def move(self, src: int, dst: int) -> None:
        """Slot `src`'s settings and RNG state now live in slot `dst` (the engine compacts its rows)."""
        for arr in (self.greedy, self.inv_temperature, self.top_k, self.top_p):
            arr[dst] = arr[src]
        self.rngs[dst] = self.rngs[src]
        self._uniforms[dst] = self._uniforms[src]
        self._next[dst] = self._next[src]

    def sample(self, rows: np.ndarray, logits: np.ndarray) -> np.ndarray:
        """Next token ids [n] for slots `rows` given their logits [n, vocab]."""
        greedy = self.greedy[rows]
        if not greedy.any():
            return self._draw(rows, logits)
        if greedy.all():
            return logits.argmax(axis=1)
        out = np.empty(len(rows), dtype=np.int64)
        out[greedy] = logits[greedy].argmax(axis=1)
        sampled = ~greedy
        out[sampled] = self._draw(rows[sampled], logits[sampled])
        return out

    def _draw(self, rows: np.ndarray, logits: np.ndarray) -> np.ndarray:
        n, vocab = logits.shape
        x = logits * self.inv_temperature[rows, None]  # float64: float32 widens exactly, then one multiply
        if self._cutting:
            x = self._cut_top_k(rows, x)
        x -= x.max(axis=1, keepdims=True)
        p = np.exp(x, out=x)
        if self._cutting:
            p = self._cut_top_p(rows, p)
        cdf = np.cumsum(p, axis=1)
        # Inverse CDF: the first token whose cumulative mass exceeds u * total (never a zero-mass one).
        if n == 1:  # the same count as below (cdf never decreases), in fewer numpy calls
            token = int(np.searchsorted(cdf[0], self._uniform(int(rows[0])) * cdf[0, -1], side="right"))
            return np.array([min(token, vocab - 1)], dtype=np.int64)
        tokens = (cdf <= (self._uniforms_of(rows) * cdf[:, -1])[:, None]).sum(axis=1)
        return np.minimum(tokens, vocab - 1)

    def _uniform(self, row: int) -> float:
        """Row `row`'s next draw."""
        k = int(self._next[row])
        if k == UNIFORMS:
            self._refill(row)
            k = 0
        self._next[row] = k + 1
        return float(self._uniforms[row, k])

    def _uniforms_of(self, rows: np.ndarray) -> np.ndarray:
        """The next draw of each of `rows` (distinct rows)."""
        at = self._next[rows]
        empty = at == UNIFORMS
        if empty.any():
            for r in rows[empty].tolist():
                self._refill(r)
            at[empty] = 0
        self._next[rows] = at + 1
        return self._uniforms[rows, at]

    def _refill(self, row: int) -> None:
        self._uniforms[row] = self.rngs[row].random(UNIFORMS)  # type: ignore[union-attr]
        self._next[row] = 0

    def _cut_top_k(self, rows: np.ndarray, x: np.ndarray) -> np.ndarray:
        """Keep each row's k largest (ties with the k-th kept too); rows with k = vocab keep everything."""
        n, vocab = x.shape
        top_k = self.top_k[rows]
        if not (top_k < vocab).any():
            return x
        kth = -np.sort(-x, axis=1)[np.arange(n), top_k - 1]
        return np.where(x >= kth[:, None], x, -np.inf)

    def _cut_top_p(self, rows: np.ndarray, p: np.ndarray) -> np.ndarray:
        """Nucleus: the smallest most-likely set whose mass reaches top_p (always at least one token)."""
        top_p = self.top_p[rows]
        if not np.isfinite(top_p).any():
            return p
        p /= p.sum(axis=1, keepdims=True)
        order = np.argsort(-p, axis=1, kind="stable")
        p_sorted = np.take_along_axis(p, order, axis=1)
        keep_sorted = (np.cumsum(p_sorted, axis=1) - p_sorted) < top_p[:, None]
        keep = np.empty_like(keep_sorted)
        np.put_along_axis(keep, order, keep_sorted, axis=1)
        return np.where(keep, p, 0.0)
