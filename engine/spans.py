"""More than one core: independent graph calls run concurrently, one intra-op thread each (ONNX Runtime
and torch release the GIL while they compute; with 2 intra-op threads ORT ran these tiny ops at half the
speed of 1)."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

# Rows per concurrent call: below this a second call costs more than it saves (measured: docs/engine.md).
MIN_SPAN = 24


class Spans:
    """Split rows [0, n) into contiguous spans, one per thread, and run a function on each."""

    def __init__(self, threads: int):
        self.threads = threads
        self._pool = ThreadPoolExecutor(threads - 1, thread_name_prefix="charlm-step") if threads > 1 else None

    def map(self, n: int, fn: Callable[[int, int], list[np.ndarray]]) -> list[list[np.ndarray]]:
        parts = max(1, min(self.threads, n // MIN_SPAN))
        if parts == 1 or self._pool is None:
            return [fn(0, n)]
        spans = list(itertools.pairwise(round(i * n / parts) for i in range(parts + 1)))
        futures = [self._pool.submit(fn, lo, hi) for lo, hi in spans[1:]]
        first = fn(*spans[0])  # the calling thread takes the first span
        return [first, *(f.result() for f in futures)]

    def each(self, tasks: list[Callable[[], list[np.ndarray]]]) -> list[list[np.ndarray]]:
        """Run independent calls, every `threads`-th one on the same thread; their results in order."""
        if self._pool is None or len(tasks) == 1:
            return [t() for t in tasks]
        k = self.threads

        def share(j: int) -> list[list[np.ndarray]]:
            return [t() for t in tasks[j::k]]

        futures = [self._pool.submit(share, j) for j in range(1, min(k, len(tasks)))]
        shares = [share(0), *(f.result() for f in futures)]
        return [shares[i % k][i // k] for i in range(len(tasks))]
