"""A request lost between the queue and a worker killed as it took it is answered, and only such a one.

LitServeClient over a stand-in for LitServe's two queues (the layer below it) and a real SharedState:
the request's place in the world is set by hand (on the queue, in a worker's row, nowhere), and a crash
by the count the main process keeps (service/watcher.py). The whole path, with a real worker stopped as
it takes a request and then killed, is in tests/service/test_crash.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from service.client import QUEUE_LOOK_S, STRAY_CHECKS, LitServeClient
from service.errors import APIError
from service.protocol import Accepted, EngineRequest
from service.shared import SharedState

QUIET_S = QUEUE_LOOK_S + 0.01  # each quiet wait takes a fresh look at the queue


class Queues:
    """LitServe's queues as the client sees them: `queued` says how many requests are on the queue."""

    def __init__(self) -> None:
        self.queued = 0
        self.asked = 0
        self.box: asyncio.Queue = asyncio.Queue()

    def submit(self, req: EngineRequest) -> None:
        self.queued += 1

    def waiting(self) -> int:
        self.asked += 1
        return self.queued

    async def mailbox(self) -> AsyncIterator[tuple[Any, Any]]:
        while True:
            yield await self.box.get(), None


async def _quiet_waits(stream: Any, n: int) -> list[Any]:
    return [await stream.next(QUIET_S) for _ in range(n)]


def _run(scenario: Any) -> Any:
    queues, shared = Queues(), SharedState(2, ["names"], held=4)
    client = LitServeClient(queues, shared)
    return asyncio.run(scenario(client, queues, shared))


def test_after_a_crash_a_request_on_no_row_and_off_the_queue_is_answered_worker_crashed() -> None:
    async def scenario(client: LitServeClient, queues: Queues, shared: SharedState) -> int:
        stream = await client.open(EngineRequest("r1", "names", ("",)))
        queues.queued = 0  # the manager handed it to worker 0 ...
        shared.crashes.value += 1  # ... which died before it wrote it in its row
        with pytest.raises(APIError) as err:
            await _quiet_waits(stream, STRAY_CHECKS + 1)
        assert err.value.status == 503 and err.value.code == "worker_crashed"
        assert err.value.headers == {"Retry-After": "1"}
        return queues.asked

    assert _run(scenario) == STRAY_CHECKS  # one look at the queue per quiet wait, no more


def test_many_requests_waiting_at_once_share_their_looks_at_the_queue() -> None:
    async def scenario(client: LitServeClient, queues: Queues, shared: SharedState) -> list[Any]:
        streams = [await client.open(EngineRequest(f"r{i}", "names", ("",))) for i in range(50)]
        shared.crashes.value += 1  # all fifty are still queued: none is lost
        ends = await asyncio.gather(*(_quiet_waits(s, 3) for s in streams), return_exceptions=True)
        assert queues.asked <= 10, queues.asked  # about a look per round (3), not one per request (150)
        return ends

    assert _run(scenario) == [[None] * 3] * 50


def test_a_request_still_queued_held_or_answered_or_with_no_crash_is_left_alone() -> None:
    async def scenario(client: LitServeClient, queues: Queues, shared: SharedState) -> None:
        queued = await client.open(EngineRequest("queued", "names", ("",)))  # still on the queue
        shared.crashes.value += 1
        assert await _quiet_waits(queued, 4) == [None] * 4

        queues.queued = 0  # now taken by worker 1, which holds it
        place = shared.held.hold(1, "queued")
        assert await _quiet_waits(queued, 4) == [None] * 4
        shared.held.free(place)  # it finished: its events are on their way, and here they are
        queues.box.put_nowait((("queued", (Accepted(0.0),)),))
        assert await queued.next(1.0) == Accepted(0.0)
        assert await _quiet_waits(queued, 4) == [None] * 4  # heard from: a worker's row tells from now on

        no_crash = await client.open(EngineRequest("before", "names", ("",)))  # counts from this crash on
        queues.queued = 0
        assert await _quiet_waits(no_crash, 4) == [None] * 4

    _run(scenario)


def test_a_request_that_reappears_between_two_looks_starts_the_count_again() -> None:
    """Found on the queue between two quiet waits: the count of looks that found it nowhere restarts."""

    async def scenario(client: LitServeClient, queues: Queues, shared: SharedState) -> None:
        stream = await client.open(EngineRequest("r", "names", ("",)))
        shared.crashes.value += 1
        for _ in range(3):
            queues.queued = 0
            assert await _quiet_waits(stream, STRAY_CHECKS - 1) == [None] * (STRAY_CHECKS - 1)
            queues.queued = 1
            assert await _quiet_waits(stream, 1) == [None]
        queues.queued = 0
        with pytest.raises(APIError):
            await _quiet_waits(stream, STRAY_CHECKS)

    _run(scenario)
