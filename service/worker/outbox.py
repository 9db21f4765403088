"""What a worker sends back in one loop iteration: one message per API server, not one per event.

Every message through LitServe's response queue is a round trip to its manager process for the worker
(put) and for the API server (get, one message at a time, each through a thread hop into its event
loop); a burst of messages at the end of a step reached the API server one after the other, and a
stream's first text waited behind them. So the events of one iteration travel together: per API
server, one message with each request's events ((uid, events), ...), addressed to that server's
mailbox (service.client), a new stream's `Accepted` with its first `Chunk`, a last `Chunk` with its
`Final`. New streams come first in the message, so their first text is handed over first.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from service.protocol import Accepted, WorkerEvent

Payload = tuple[tuple[Any, tuple[WorkerEvent, ...]], ...]  # ((request uid, its events), ...)
Send = Callable[[int, Payload], None]  # (API server's response queue id, payload)


class Outbox:
    """The events of the current iteration, per request, in the order they were emitted."""

    def __init__(self) -> None:
        self.pending: dict[Any, tuple[Any, list[WorkerEvent]]] = {}

    def add(self, job: Any, event: WorkerEvent) -> None:
        entry = self.pending.get(job.uid)
        if entry is None:
            self.pending[job.uid] = (job, [event])
        else:
            entry[1].append(event)

    def flush(self, send: Send) -> int:
        """Send one message per API server holding every request's events (new streams first); the
        number of messages."""
        batches = list(self.pending.values())
        self.pending = {}
        batches.sort(key=lambda jb: not isinstance(jb[1][0], Accepted))  # stable: otherwise as emitted
        by_server: dict[int, list[tuple[Any, tuple[WorkerEvent, ...]]]] = {}
        for job, events in batches:
            by_server.setdefault(job.rqid, []).append((job.uid, tuple(events)))
        for rqid, payload in by_server.items():
            send(rqid, tuple(payload))
        return len(by_server)
