"""The runner of the window models (bigram / mlp / wavenet): each step feeds every row's last block_size
tokens (the interface is GPTRunner's, engine/runners.py)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from contract import Manifest
from engine.backends import Backend
from engine.spans import Spans


class WindowRunner:
    """bigram / mlp / wavenet: every step feeds the last block_size tokens of each row.

    Contexts shorter than the window are left-padded with `pad`: the boundary token for `lines` models
    (makemore's convention: a name starts after a window full of boundaries), and for `stream` models a
    newline when the vocabulary has one (see Engine.pad_token).
    """

    def __init__(self, backend: Backend, manifest: Manifest, pad: int, slots: int, threads: int):
        self.backend, self.pad = backend, pad
        self.block_size = manifest.block_size
        self.window = np.full((slots, manifest.block_size), pad, dtype=np.int64)
        self._spans = Spans(threads)
        self._to_score: dict[int, list[int]] = {}
        self.scores: dict[int, tuple[list[int], np.ndarray]] = {}  # row -> (its context, logits of context[1:])

    def start(self, row: int, context: Sequence[int], score: bool = False) -> None:
        tail = list(context)[-self.block_size :]
        self.window[row] = self.pad
        if tail:
            self.window[row, self.block_size - len(tail) :] = tail
        self._to_score.pop(row, None)
        if score:
            self._to_score[row] = list(context)

    def forward(self, n: int) -> np.ndarray:
        parts = self._spans.map(n, lambda lo, hi: self.backend.run([self.window[lo:hi]])[:1])
        for row, context in self._to_score.items():  # every window of the prompt, one call
            padded = np.array([self.pad] * self.block_size + context, dtype=np.int64)
            windows = np.lib.stride_tricks.sliding_window_view(padded, self.block_size)[1 : len(context)]
            logits = self.backend.run([np.ascontiguousarray(windows)])[0] if len(windows) else windows[:0]
            self.scores[row] = (context, logits)
        self._to_score.clear()
        return np.concatenate([p[0] for p in parts]) if len(parts) > 1 else parts[0][0]

    def prefills(self, n: int) -> bool:
        """Whether the next step also scores a prompt (one more call)."""
        return bool(self._to_score)

    def waiting(self, n: int) -> None:
        """Every row gets its logits at every step."""
        return None

    def feed(self, rows: np.ndarray, tokens: np.ndarray) -> None:
        n = len(tokens)  # every row is ready: rows is arange(n)
        self.window[:n, :-1] = self.window[:n, 1:]  # numpy copes with the overlap
        self.window[:n, -1] = tokens

    def move(self, src: int, dst: int) -> None:
        self.window[dst] = self.window[src]
        if src in self._to_score:
            self._to_score[dst] = self._to_score.pop(src)

    def warmup(self) -> np.ndarray:
        return self.backend.run([self.window[:1]])[0]
