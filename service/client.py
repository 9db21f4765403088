"""How the Gateway reaches the workers: an `EngineClient` opens an `EventStream` of a request's events.

`LitServeClient` puts requests on LitServe's own request queue and gets the answers through its response
transport, into one mailbox per API server: a worker sends, per loop iteration, one message to each API
server with the events of all its requests (service/worker/outbox.py), addressed to the mailbox's fixed
id, and the mailbox hands each request's events to its `MailboxStream`. Each message through LitServe's
(manager-queue) transport is a round trip to its manager process and a thread hop into the event loop,
one message after the other; one message per request and event made a burst of them at the end of a
step queue up, and a stream's first text waited behind them.

Both ends are what LitServe gives a LitSpec, and what its own OpenAISpec uses: `spec.request_queue`,
`spec.response_buffer` and `spec.response_queue_id` (set by the LitServer for each API server). The mailbox
is an entry of the response buffer (CharLMSpec.stream makes LitServe keep every message there, in order),
registered before the first request is put, so nothing can arrive for it unseen. The put runs in a
thread: it is a manager round trip too, during which the event loop would stand still.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from typing import Any, Protocol

from service.protocol import EngineRequest, WorkerEvent
from service.shared import SharedState

MAILBOX = "charlm-mailbox-{}"  # the response-buffer id of API server number {} (its response queue id)


def mailbox_id(response_queue_id: int) -> str:
    return MAILBOX.format(response_queue_id)


class EventStream(Protocol):
    async def next(self, timeout: float) -> WorkerEvent | None:
        """The next event, None if none came within `timeout`; StopAsyncIteration once it ended."""

    async def close(self) -> None: ...


class EngineClient(Protocol):
    async def open(self, req: EngineRequest) -> EventStream: ...

    def cancel(self, rid: str) -> None: ...


class MailboxStream:
    """One request's events, as the mailbox hands them over."""

    def __init__(self, on_close: Any = None):
        self._ready: deque[WorkerEvent] = deque()
        self._waiter: asyncio.Future | None = None
        self._on_close = on_close

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
                return None
        return self._ready.popleft()

    async def close(self) -> None:
        if self._on_close is not None:
            self._on_close()
            self._on_close = None


def _wake(waiter: asyncio.Future) -> None:
    if not waiter.done():
        waiter.set_result(None)


class LitServeClient:
    """Requests onto LitServe's request queue; answers from this API server's mailbox (module docstring)."""

    def __init__(self, spec: Any, shared: SharedState):
        self._spec = spec  # a LitSpec: its queue, buffer and id are set by the LitServer before it serves
        self.shared = shared
        self._streams: dict[str, MailboxStream] = {}
        self._reader: asyncio.Task | None = None

    async def open(self, req: EngineRequest) -> EventStream:
        if self._reader is None:
            self._reader = self._open_mailbox()
        spec, uid = self._spec, req.rid
        stream = self._streams[uid] = MailboxStream(on_close=lambda: self._streams.pop(uid, None))
        item = (spec.response_queue_id, uid, time.monotonic(), req)  # as LitServe's OpenAISpec puts one
        try:
            await asyncio.get_running_loop().run_in_executor(None, spec.request_queue.put, item)
        except BaseException:
            self._streams.pop(uid, None)
            raise
        return stream

    def cancel(self, rid: str) -> None:
        self.shared.cancel(rid)

    def _open_mailbox(self) -> asyncio.Task:
        from litserve.utils import ResponseBufferItem

        data_available, messages = asyncio.Event(), deque()
        key = mailbox_id(self._spec.response_queue_id)
        self._spec.response_buffer[key] = ResponseBufferItem(event=data_available, response_queue=messages)
        return asyncio.get_running_loop().create_task(self._deliver(messages, data_available), name=key)

    async def _deliver(self, messages: deque, data_available: asyncio.Event) -> None:
        """Forever: each message is ((uid, events), ...) from one worker iteration."""
        while True:
            await data_available.wait()
            data_available.clear()
            while messages:
                payload, _status = messages.popleft()
                with contextlib.suppress(Exception):
                    for uid, events in payload:
                        stream = self._streams.get(uid)
                        if stream is not None:  # else its request is over (client gone, deadline)
                            stream.push(events)
