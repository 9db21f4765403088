"""The worker's sending thread (service/worker/sender.py): messages leave in order without the scheduler
waiting for them, join up per API server while the transport is slow, and a finished request leaves the
worker's row of held requests only once its last message has left."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

from service.worker.loop import SchedulerLoop
from service.worker.sender import Sender, joined


def _wait(predicate, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    t0 = time.monotonic()
    while not predicate():
        assert time.monotonic() - t0 < timeout
        time.sleep(0.005)


def test_messages_leave_in_order_and_join_up_while_the_transport_is_slow() -> None:
    gate, calls = threading.Event(), []

    def put(rqid: int, payload: tuple) -> None:
        calls.append((rqid, payload))
        gate.wait(5)  # the first send stands still, as a manager round trip on a busy machine does

    sender = Sender(put)
    t0 = time.perf_counter()
    sender.send(0, (("a", (1,)),))
    _wait(lambda: len(calls) == 1)
    sender.send(0, (("a", (2,)),))
    sender.send(1, (("b", (1,)),))
    sender.send(0, (("c", (1,)), ("a", (3,))))
    assert time.perf_counter() - t0 < 0.5 and sender.queued == 4 and sender.sent == 0  # nobody waited
    gate.set()
    _wait(lambda: sender.sent == 4)
    assert calls == [
        (0, (("a", (1,)),)),
        (0, (("a", (2,)), ("c", (1,)), ("a", (3,)))),  # joined: a's events still in order
        (1, (("b", (1,)),)),
    ]


def test_joined_keeps_each_servers_messages_in_order() -> None:
    assert joined([(0, (("a", (1,)),)), (1, (("b", (1,)),)), (0, (("a", (2,)),))]) == {
        0: (("a", (1,)), ("a", (2,))),
        1: (("b", (1,)),),
    }


def test_a_finished_request_stays_held_until_its_last_message_has_left() -> None:
    freed: list[int] = []
    shared = SimpleNamespace(held=SimpleNamespace(free=freed.append))
    sched = SimpleNamespace(jobs={})  # the request is over in the scheduler
    loop = SchedulerLoop()
    loop.held = {"a": 7}
    sender = SimpleNamespace(queued=3, sent=2)  # its last message is the third, not yet sent
    loop._release_held(sched, shared, sender)  # type: ignore[arg-type]
    assert freed == [] and "a" not in loop.held
    sender.sent = 3
    loop._release_held(sched, shared, sender)  # type: ignore[arg-type]
    assert freed == [7]
