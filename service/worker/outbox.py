"""What a worker sends back in one loop iteration: one message per request, not one per event.

Every message through LitServe's response queue is a round trip to its manager process for the worker
(put) and for the API server (get, one message at a time, each through a thread hop into its event
loop); a burst of messages at the end of a step reaches the API server one after the other. So the
events a request got in one iteration travel together, as a tuple (service.client unpacks it): a new
stream's `Accepted` with its first `Chunk`, a last `Chunk` with the `Final`. Streams that get their
first text go first, so they do not wait behind other requests' messages.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from service.protocol import Accepted, WorkerEvent

Send = Callable[[Any, Any, tuple[WorkerEvent, ...]], None]  # (job or orphan, its uid, events)


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
        """Send every request's events as one message (new streams first); the number of messages."""
        batches = list(self.pending.values())
        self.pending = {}
        batches.sort(key=lambda jb: not isinstance(jb[1][0], Accepted))  # stable: otherwise as emitted
        for job, events in batches:
            send(job, job.uid, tuple(events))
        return len(batches)
