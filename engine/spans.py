"""More than one core: independent graph calls run concurrently, one intra-op thread each (ONNX Runtime
and torch release the GIL while they compute; with 2 intra-op threads ORT ran these tiny ops at half the
speed of 1)."""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import numpy as np

# Rows per concurrent call: below this a second call costs more than it saves (measured: docs/engine.md).
MIN_SPAN = 16

T = TypeVar("T")


class Spans:
    """Split rows [0, n) into contiguous spans, one per thread, and run a function on each."""

    def __init__(self, threads: int):
        self.threads = threads
        self._pool = ThreadPoolExecutor(threads - 1, thread_name_prefix="charlm-step") if threads > 1 else None

    def bounds(self, n: int) -> list[tuple[int, int]]:
        """The spans of rows [0, n): one per thread, each at least MIN_SPAN rows (one span below that)."""
        parts = max(1, min(self.threads, n // MIN_SPAN)) if self._pool is not None else 1
        return list(itertools.pairwise(round(i * n / parts) for i in range(parts + 1)))

    def map(self, n: int, fn: Callable[[int, int], list[np.ndarray]]) -> list[list[np.ndarray]]:
        """`fn` on each span, span k always on thread k (the calling thread takes the first), so a
        thread sees the same rows step after step (run_decode keeps a binding per thread)."""
        spans = self.bounds(n)
        if len(spans) == 1:
            return [fn(0, n)]
        futures = [self._pool.submit(fn, lo, hi) for lo, hi in spans[1:]]
        first = fn(*spans[0])  # the calling thread takes the first span
        return [first, *(f.result() for f in futures)]

    def each(self, tasks: list[Callable[[], T]]) -> list[T]:
        """Run independent calls on all threads, each thread taking the next task when it is done with
        one (so give the longest first); their results in the order of `tasks`."""
        if self._pool is None or len(tasks) == 1:
            return [t() for t in tasks]
        results: list = [None] * len(tasks)
        queue = deque(range(len(tasks)))  # popleft is atomic: each task runs once

        def drain() -> None:
            while queue:
                try:
                    i = queue.popleft()
                except IndexError:
                    return
                results[i] = tasks[i]()

        futures = [self._pool.submit(drain) for _ in range(min(self.threads, len(tasks)) - 1)]
        drain()
        for f in futures:
            f.result()
        return results
