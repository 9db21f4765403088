"""The worker's sending thread: an iteration's messages leave without the scheduler waiting for them.

A message through LitServe's transport (LitLoop.put_response onto its manager queues) is a round trip
to the manager process, and on a busy machine that process waits for a core: the scheduler stood still
for it after every step (docs/benchmarks.md, "First byte"). The Sender sends from its own thread, in
order; while the socket waits the GIL is free and the engine steps. When it falls behind, it joins
what waits for one API server into one message: a message is ((request uid, events), ...), so joined in
order every request's events stay in order.

A request leaves the worker's row of held requests (service/held.py) only once the message with its
last events is sent (`sent`): a crash before that still answers it.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable

from service.worker.outbox import Payload

log = logging.getLogger("charlm.worker")


class Sender:
    """Messages (API server id, payload) sent from one thread, in order; `queued` and `sent` count them."""

    def __init__(self, put: Callable[[int, Payload], None]):
        self._put = put
        self._waiting: deque[tuple[int, Payload]] = deque()
        self._ready = threading.Condition()
        self.queued = 0  # messages handed to send()
        self.sent = 0  # of those, how many have left (joined ones count each)
        threading.Thread(target=self._run, name="charlm-sender", daemon=True).start()

    def send(self, rqid: int, payload: Payload) -> None:
        with self._ready:
            self._waiting.append((rqid, payload))
            self.queued += 1
            self._ready.notify()

    def _run(self) -> None:
        while True:
            with self._ready:
                while not self._waiting:
                    self._ready.wait()
                taken = list(self._waiting)
                self._waiting.clear()
            for rqid, payload in joined(taken).items():
                try:
                    self._put(rqid, payload)
                except (EOFError, BrokenPipeError, ConnectionError):
                    return  # the server is stopping: the manager (its queues) is gone
                except Exception:
                    log.exception("a message to API server %d was lost", rqid)
            self.sent += len(taken)


def joined(messages: list[tuple[int, Payload]]) -> dict[int, Payload]:
    """One payload per API server, each the concatenation of its messages in order."""
    out: dict[int, Payload] = {}
    for rqid, payload in messages:
        out[rqid] = out.get(rqid, ()) + payload
    return out
