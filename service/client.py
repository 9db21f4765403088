"""How the Gateway reaches the workers: an `EngineClient` opens an `EventStream` of a request's events.

`LitServeClient` puts requests on LitServe's own queue and reads the answers from its response transport
through LitServe's StreamingRequestHandler (not underscored, though not exported from litserve's
top level: the one way to get streamed worker answers without touching its response buffer).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator
from typing import Any, Protocol

from service.protocol import EngineRequest, WorkerEvent
from service.shared import SharedState


class EventStream(Protocol):
    async def next(self, timeout: float) -> WorkerEvent | None:
        """The next event, None if none came within `timeout`; StopAsyncIteration once it ended."""

    async def close(self) -> None: ...


class EngineClient(Protocol):
    async def open(self, req: EngineRequest) -> EventStream: ...

    def cancel(self, rid: str) -> None: ...


class IteratorStream:
    """An EventStream over an async iterator, waited on without cancelling it at each timeout. An item
    may be a tuple of events (a worker sends a request's events of one iteration together:
    service/worker/outbox.py); they come out one by one, the ones after the first without waiting."""

    def __init__(self, iterator: AsyncIterator[Any]):
        self._it = iterator
        self._next: asyncio.Task | None = None
        self._ready: deque[WorkerEvent] = deque()

    async def _anext(self) -> Any:
        return await self._it.__anext__()

    async def next(self, timeout: float) -> WorkerEvent | None:
        if self._ready:
            return self._ready.popleft()
        if self._next is None:
            self._next = asyncio.ensure_future(self._anext())
        done, _ = await asyncio.wait({self._next}, timeout=max(0.0, timeout))
        if not done:
            return None
        task, self._next = self._next, None
        item = task.result()
        if not isinstance(item, tuple):
            return item
        self._ready.extend(item[1:])
        return item[0]

    async def close(self) -> None:
        if self._next is not None:
            self._next.cancel()
            with contextlib.suppress(BaseException):
                await self._next
        with contextlib.suppress(Exception):
            await self._it.aclose()  # type: ignore[attr-defined]


class LitServeClient:
    """Requests onto LitServe's request queue, answers from its response buffer (what its streaming
    handler does, through the LitServer's public attributes), but the put runs in a thread: the queue
    is its manager process's, and a put is a round trip that can take milliseconds on a busy machine,
    during which the event loop (every other request's stream) would stand still. The answer's place
    in the buffer exists before the put, so no event can arrive before it."""

    def __init__(self, lit_api: Any, server: Any, shared: SharedState):
        self._server = server
        self._path = lit_api.api_path
        self.shared = shared

    async def open(self, req: EngineRequest) -> EventStream:
        from litserve.utils import ResponseBufferItem

        server, uid = self._server, str(uuid.uuid4())
        data_available, answers = asyncio.Event(), deque()
        server.response_buffer[uid] = ResponseBufferItem(event=data_available, response_queue=answers)
        item = (server.app.response_queue_id, uid, time.monotonic(), req)
        try:
            await asyncio.get_running_loop().run_in_executor(None, server.litapi_request_queues[self._path].put, item)
        except BaseException:
            server.response_buffer.pop(uid, None)
            raise
        return IteratorStream(_answers(server, uid, answers, data_available))

    def cancel(self, rid: str) -> None:
        self.shared.cancel(rid)


async def _answers(server: Any, uid: str, answers: deque, data_available: asyncio.Event) -> AsyncIterator[Any]:
    """A request's items from LitServe's response buffer, until its worker says the stream ended."""
    try:
        async for item in server.data_streamer(answers, data_available=data_available):
            yield item
    finally:
        server.response_buffer.pop(uid, None)
