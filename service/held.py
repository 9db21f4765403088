"""Which requests each worker process holds, in shared memory, so a crash answers every one of them.

A worker writes a 63-bit digest of each request id into its row the moment it takes the request off
the queue, and clears it when the request's last events have left. When the main process sees the worker die, it marks
the worker crashed (shared.CRASHED); each API server, polling its waiting requests every POLL_S, finds
its own ids in the dead worker's row and answers them (503 `worker_crashed`, or an SSE error event)
instead of waiting for events that will never come. The row is wiped only when the replacement worker
starts (after LOST_GRACE_S, so every API server has looked). A request still on LitServe's queue is
not in any row: the replacement (or another worker) takes it. One the dead worker was being handed as
it died is in no row and no longer queued: service/client.py answers it the same way.
"""

from __future__ import annotations

import hashlib
import multiprocessing

_CTX = multiprocessing.get_context("spawn")
LOST_GRACE_S = 1.0  # a crashed worker's row stays readable this long (API servers poll every 0.25 s)


def digest(rid: str) -> int:
    """A non-zero 63-bit number for a request id (0 marks a free place)."""
    return (int.from_bytes(hashlib.blake2b(rid.encode(), digest_size=8).digest(), "little") >> 1) or 1


class HeldTable:
    """One row of `capacity` places per worker; a worker only writes its own row, so no lock."""

    def __init__(self, workers: int, capacity: int):
        self.capacity = capacity
        self.places = _CTX.RawArray("q", workers * capacity)

    def hold(self, worker: int, rid: str) -> int | None:
        """Note that `worker` holds `rid`; the place to free later, None when the row is full."""
        base, value = worker * self.capacity, digest(rid)
        for i in range(base, base + self.capacity):
            if self.places[i] == 0:
                self.places[i] = value
                return i
        return None

    def free(self, place: int) -> None:
        self.places[place] = 0

    def wipe(self, worker: int) -> None:
        base = worker * self.capacity
        for i in range(base, base + self.capacity):
            self.places[i] = 0

    def holds(self, worker: int, rid: str) -> bool:
        base, value = worker * self.capacity, digest(rid)
        return value in self.places[base : base + self.capacity]
