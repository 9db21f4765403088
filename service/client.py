"""How the Gateway reaches the workers: an `EngineClient` opens an `EventStream` of a request's events.

`LitServeClient` talks to the workers through the spec's `WorkerQueues` (service.http.routes.CharLMSpec,
a LitSpec): `submit` puts a request on LitServe's request queue, `mailbox` is this API server's one entry
in LitServe's response buffer, read through LitServe's own `data_streamer`, the way LitServe's OpenAISpec
puts its requests and reads its answers. A worker sends, per loop iteration, one message to each API
server with the events of all its requests (service/worker/outbox.py), addressed to the mailbox's fixed
id, and the client hands each request's events to its `MailboxStream`. Each message through LitServe's
(manager-queue) transport is a round trip to its manager process and a thread hop into the event loop,
one message after the other; one message per request and event made a burst of them at the end of a
step queue up, and a stream's first text waited behind them.

The mailbox is registered before the first request is put, so nothing can arrive for it unseen. The
put runs in a thread: it is a manager round trip too, during which the event loop would stand still.

A worker killed while it takes a request off the queue loses it: the manager has handed it over, the
worker never holds it (service/held.py). So after a crash, a request that has had no event yet and is
on no worker's row while the queue is empty, twice in a row (STRAY_CHECKS quiet waits), is answered as
one its worker held would be (503 `worker_crashed`). A worker holds a request the moment it takes it,
so only a dead one can have it then.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol

from service.errors import worker_crashed
from service.protocol import EngineRequest, WorkerEvent
from service.shared import SharedState

log = logging.getLogger("charlm.client")

STRAY_CHECKS = 2  # quiet waits in a row that find a request nowhere before it counts as lost
QUEUE_LOOK_S = 0.1  # a look at the queue's length serves every request that asks within this long
MAILBOX = "charlm-mailbox-{}"  # the response-buffer id of API server number {} (its response queue id)


def mailbox_id(response_queue_id: int) -> str:
    return MAILBOX.format(response_queue_id)


class WorkerQueues(Protocol):
    """LitServe's two queues as a LitSpec reaches them (CharLMSpec implements it)."""

    def submit(self, req: EngineRequest) -> None:
        """Put a request on the workers' queue (blocking: a round trip to LitServe's manager)."""

    def mailbox(self) -> AsyncIterator[tuple[Any, Any]]:
        """Register this API server's mailbox at once; then every (message, status) sent to it, in order."""

    def waiting(self) -> int:
        """How many requests are on the workers' queue (a round trip to LitServe's manager too)."""


class EventStream(Protocol):
    async def next(self, timeout: float) -> WorkerEvent | None:
        """The next event, None if none came within `timeout`; StopAsyncIteration once it ended;
        APIError 503 `worker_crashed` once the request is known lost with a worker."""

    async def close(self) -> None: ...


class EngineClient(Protocol):
    async def open(self, req: EngineRequest) -> EventStream: ...

    def cancel(self, rid: str) -> None: ...


class MailboxStream:
    """One request's events, as the mailbox hands them over. Until the first one comes, a quiet wait
    asks `on_quiet` whether the request was lost on its way to a worker (LitServeClient)."""

    def __init__(self, on_close: Any = None, on_quiet: Callable[[MailboxStream], Awaitable[None]] | None = None):
        self._ready: deque[WorkerEvent] = deque()
        self._waiter: asyncio.Future | None = None
        self._on_close = on_close
        self._on_quiet = on_quiet

    def push(self, events: tuple[WorkerEvent, ...]) -> None:
        self._ready.extend(events)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def next(self, timeout: float) -> WorkerEvent | None:
        if not self._ready:
            loop = asyncio.get_running_loop()
            self._waiter = waiter = loop.create_future()
            timer = loop.call_later(max(0.0, timeout), _wake, waiter)
            try:
                await waiter
            finally:
                timer.cancel()
                self._waiter = None
            if not self._ready:
                if self._on_quiet is not None:
                    await self._on_quiet(self)
                return None
        self._on_quiet = None  # a worker has it: a crash from now on is told by its row (service/held.py)
        return self._ready.popleft()

    @property
    def quiet(self) -> bool:
        return not self._ready

    async def close(self) -> None:
        if self._on_close is not None:
            self._on_close()
            self._on_close = None


def _wake(waiter: asyncio.Future) -> None:
    if not waiter.done():
        waiter.set_result(None)


class LitServeClient:
    """Requests onto LitServe's request queue; answers from this API server's mailbox (module docstring)."""

    def __init__(self, queues: WorkerQueues, shared: SharedState):
        self._queues = queues
        self.shared = shared
        self._streams: dict[str, MailboxStream] = {}
        self._reader: asyncio.Task | None = None
        self._look: tuple[float, int] | None = None  # (when, how many were on the queue then)
        self._looking = asyncio.Lock()

    async def open(self, req: EngineRequest) -> EventStream:
        loop = asyncio.get_running_loop()
        if self._reader is None:
            self._reader = loop.create_task(self._deliver(self._queues.mailbox()), name="charlm-mailbox")
        uid = req.rid
        crashes, strays = self.shared.crashes.value, 0

        async def on_quiet(stream: MailboxStream) -> None:
            """After a crash: on no worker's row, not on the queue, twice in a row, no event: it was lost."""
            nonlocal strays
            if self.shared.crashes.value == crashes or self.shared.held_anywhere(uid):
                return
            found = await self._queued() or self.shared.held_anywhere(uid) or not stream.quiet
            strays = 0 if found else strays + 1
            if strays >= STRAY_CHECKS:
                log.error("%s was lost with a worker that crashed as it took the request", uid)
                raise worker_crashed()

        stream = self._streams[uid] = MailboxStream(on_close=lambda: self._streams.pop(uid, None), on_quiet=on_quiet)
        try:
            await loop.run_in_executor(None, self._queues.submit, req)
        except BaseException:
            self._streams.pop(uid, None)
            raise
        return stream

    def cancel(self, rid: str) -> None:
        self.shared.cancel(rid)

    async def _queued(self) -> bool:
        """Is anything on the workers' queue? One look per QUEUE_LOOK_S however many requests ask."""
        async with self._looking:
            now = time.monotonic()
            if self._look is None or now - self._look[0] >= QUEUE_LOOK_S:
                loop = asyncio.get_running_loop()
                self._look = (now, await loop.run_in_executor(None, self._queues.waiting))
            return self._look[1] > 0

    async def _deliver(self, messages: AsyncIterator[tuple[Any, Any]]) -> None:
        """Forever: each message is ((uid, events), ...) from one worker iteration."""
        while True:
            async for payload, _status in messages:
                with contextlib.suppress(Exception):
                    for uid, events in payload:
                        stream = self._streams.get(uid)
                        if stream is not None:  # else its request is over (client gone, deadline)
                            stream.push(events)
            log.error("the mailbox ended (an error status from LitServe): opening it again")
            messages = self._queues.mailbox()
