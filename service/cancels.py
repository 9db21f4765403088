"""Request ids the API servers gave up on (client gone, deadline passed), told to every worker through
shared memory: one ring per worker, which only that worker reads.

Not a multiprocessing.Queue per worker: a worker killed while it holds its queue's read lock, or halfway
through reading a message, leaves the queue locked, or torn, for the worker that replaces it. Here the API
servers write under a lock only they take (one of them dying stops the server, service/watcher.py),
and a worker only reads, keeping its own place. A new worker starts RING places back, so it still sees
the cancellations of requests that are on the queue; one that falls more than RING behind misses the
oldest (their deadlines still end them on the worker).
"""

from __future__ import annotations

import multiprocessing

_CTX = multiprocessing.get_context("spawn")
RID_BYTES = 64  # a request id is a route's prefix and 32 hex digits
RING = 1024


class CancelBoard:
    def __init__(self, workers: int):
        self.workers = workers
        self.ids = _CTX.RawArray("c", workers * RING * RID_BYTES)
        self.written = _CTX.RawArray("q", workers)  # ids posted to each worker, ever
        self.lock = _CTX.Lock()  # the API servers' only
        self.place: dict[int, int] = {}  # a worker process's own: how far it has read (not shared)

    def post(self, rid: str) -> None:
        """Tell every worker (the request may still be queued, so any of them may get it)."""
        data = rid.encode()[:RID_BYTES].ljust(RID_BYTES, b"\0")
        with self.lock:
            for w in range(self.workers):
                n = self.written[w]
                at = (w * RING + n % RING) * RID_BYTES
                self.ids[at : at + RID_BYTES] = data
                self.written[w] = n + 1  # after the id: a reader that sees the count sees the id

    def read(self, worker: int) -> list[str]:
        """The ids posted to `worker` since its last read (its first: the last RING ever posted)."""
        end = self.written[worker]
        start = max(self.place.get(worker, 0), end - RING)
        self.place[worker] = end
        out = []
        for n in range(start, end):
            at = (worker * RING + n % RING) * RID_BYTES
            out.append(self.ids[at : at + RID_BYTES].rstrip(b"\0").decode(errors="replace"))
        return out
