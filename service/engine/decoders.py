"""Turn a backend into a token loop: a rolling window for bigram/mlp/wavenet, a KV cache for GPT.

A decoder feeds logits of a set of sequences (`rows`) to a `Stepper`, which samples, updates text and
says which rows are still alive; the decoder drops the finished rows from its arrays so they stop
costing compute, and yields the stepper's deltas once per model call.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from contract import Manifest
from service.engine.backends import Backend
from service.engine.types import Delta


class Stepper(Protocol):
    def advance(self, rows: np.ndarray, logits: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[Delta]]:
        """Sample rows' next tokens -> (tokens [n], alive mask [n], deltas)."""
        ...


class Decoder(Protocol):
    def run(self, contexts: Sequence[Sequence[int]], stepper: Stepper) -> Iterator[list[Delta]]:
        """Generate for every context (the tokens before the first new one) until the stepper ends them."""
        ...

    def warmup(self) -> np.ndarray:
        """One tiny call, so the first request does not pay for ORT's first-run allocations; logits."""
        ...


class WindowDecoder:
    """bigram / mlp / wavenet: every step feeds the last block_size tokens of each sequence.

    Contexts shorter than the window are left-padded with `pad`: the boundary token for `lines` models
    (makemore's convention: a name starts after a window full of boundaries), and for `stream` models a
    newline when the vocabulary has one (text starting after a blank line is the nearest thing to a
    document start the model has seen; see Generator.pad_token).
    """

    def __init__(self, backend: Backend, manifest: Manifest, pad: int):
        self.backend = backend
        self.block_size = manifest.block_size
        self.pad = pad

    def run(self, contexts: Sequence[Sequence[int]], stepper: Stepper) -> Iterator[list[Delta]]:
        block = self.block_size
        window = np.full((len(contexts), block), self.pad, dtype=np.int64)
        for i, ctx in enumerate(contexts):
            tail = list(ctx)[-block:]
            if tail:
                window[i, block - len(tail) :] = tail
        rows = np.arange(len(contexts))
        while rows.size:
            (logits,) = self.backend.run([window])[:1]
            tokens, alive, deltas = stepper.advance(rows, logits)
            yield deltas
            if not alive.all():
                rows, window, tokens = rows[alive], window[alive], tokens[alive]
                if not rows.size:
                    return
            window[:, :-1] = window[:, 1:]  # numpy copes with the overlap
            window[:, -1] = tokens

    def warmup(self) -> np.ndarray:
        return self.backend.run([np.full((1, self.block_size), self.pad, dtype=np.int64)])[0]


@dataclass
class _Group:
    """Sequences whose caches have the same length: they share one batched call per step."""

    rows: np.ndarray  # indices into contexts
    cache: list[np.ndarray]  # 2 * n_layer arrays [n, n_head, length, head_dim]
    length: int
    next_tokens: np.ndarray  # [n] sampled, not yet fed


class GPTDecoder:
    """GPT through its KV-cache step graph: prefill the prompt in one call, then one token per call.

    The graph has no attention mask and learned positions, so a batched call needs every row at the
    same cache length: left-padding would shift positions and change the result. Instead sequences are
    grouped by cache length; each distinct prompt length is prefilled on its own, then the shortest
    group decodes alone until it reaches the next one and the two merge. So every sequence gets exactly
    the computation it would get alone, and a batch of mixed prompts costs (longest - shortest) extra
    calls once, not one call per group per step.

    Context limit: a prompt longer than block_size keeps its last block_size tokens; when a cache is
    full (length == block_size), the sequence is re-prefilled from its last block_size // 2 tokens
    (positions are learned, the cache cannot slide) and continues from there. Equivalently: whenever
    the context would exceed block_size tokens, only its last block_size // 2 are kept.
    """

    def __init__(self, backend: Backend, manifest: Manifest, pad: int):
        self.backend = backend
        self.block_size = manifest.block_size
        self.keep = max(1, manifest.block_size // 2)
        self.n_layer = manifest.n_layer or 0
        self.n_head = manifest.n_head or 0
        self.head_dim = manifest.head_dim or 0
        self.pad = pad

    def _empty(self, n: int) -> list[np.ndarray]:
        empty = np.zeros((n, self.n_head, 0, self.head_dim), dtype=np.float32)
        return [empty] * (2 * self.n_layer)

    def _call(self, idx: np.ndarray, pos: int, cache: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        out = self.backend.run([idx, np.array([pos], dtype=np.int64), *cache])
        return out[0], out[1:]

    def run(self, contexts: Sequence[Sequence[int]], stepper: Stepper) -> Iterator[list[Delta]]:
        block, keep = self.block_size, self.keep
        # Only the tail is ever re-read (on a shift), so keep at most block_size tokens per sequence.
        history = [list(ctx)[-block:] or [self.pad] for ctx in contexts]
        groups: dict[int, _Group] = {}

        def settle(group: _Group, tokens: np.ndarray, alive: np.ndarray, cache: list[np.ndarray], length: int):
            if not alive.all():
                group.rows, tokens = group.rows[alive], tokens[alive]
                cache = [c[alive] for c in cache]
            if not group.rows.size:
                return
            for r, t in zip(group.rows.tolist(), tokens.tolist(), strict=True):
                h = history[r]
                h.append(t)
                if len(h) > 2 * block:
                    del h[:-block]
            other = groups.pop(length, None)
            if other is not None:  # caught up with another group: merge, one call per step from now
                rows = np.concatenate([other.rows, group.rows])
                cache = [np.concatenate(pair, axis=0) for pair in zip(other.cache, cache, strict=True)]
                tokens = np.concatenate([other.next_tokens, tokens])
                groups[length] = _Group(rows, cache, length, tokens)
            else:
                groups[length] = _Group(group.rows, cache, length, tokens)

        by_length: dict[int, list[int]] = {}
        for r, h in enumerate(history):
            by_length.setdefault(len(h), []).append(r)
        for length in sorted(by_length):
            rows = np.array(by_length[length], dtype=np.int64)
            idx = np.array([history[r] for r in rows.tolist()], dtype=np.int64)
            logits, cache = self._call(idx, 0, self._empty(len(rows)))
            tokens, alive, deltas = stepper.advance(rows, logits)
            yield deltas
            settle(_Group(rows, [], length, tokens), tokens, alive, cache, length)

        while groups:
            length = min(groups)
            group = groups.pop(length)
            if length >= block:  # full: restart from the last `keep` tokens (the pending one included)
                idx = np.array([history[r][-keep:] for r in group.rows.tolist()], dtype=np.int64)
                logits, cache = self._call(idx, 0, self._empty(len(group.rows)))
                new_length = keep
            else:
                logits, cache = self._call(group.next_tokens[:, None], length, group.cache)
                new_length = length + 1
            tokens, alive, deltas = stepper.advance(group.rows, logits)
            yield deltas
            settle(group, tokens, alive, cache, new_length)

    def warmup(self) -> np.ndarray:
        """A 1-token prefill and a decode step (when block_size leaves room for one)."""
        logits, cache = self._call(np.full((1, 1), self.pad, dtype=np.int64), 0, self._empty(1))
        if self.block_size > 1:
            logits, _ = self._call(np.full((1, 1), self.pad, dtype=np.int64), 1, cache)
        return logits
