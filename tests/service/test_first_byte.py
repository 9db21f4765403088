"""The first byte: a stream's text leaves the worker at once, then at most every CHUNK_INTERVAL_S
(service/worker/chunks.py), in-process over a fake engine with a fake clock; a request's events of one
iteration travel as one message per API server, new streams first (outbox.py), and its mailbox hands each
request its own (client.py); the request queue's put never stalls the API server's event loop; and the
server-side first-byte measure (charlm_time_to_first_byte_seconds, first_byte_ms on the access line) on the
real server."""

from __future__ import annotations

import asyncio
import re
import time
from types import SimpleNamespace
from typing import Any

import httpx
from litserve.server import LitServer
from litserve.utils import LitAPIStatus

from engine import SamplingParams
from service.client import LitServeClient, mailbox_id
from service.http.routes import CharLMSpec
from service.protocol import Accepted, ChoiceDelta, Chunk, EngineRequest, Final, WorkerEvent
from service.shared import SharedState
from service.worker.api import CharLMAPI
from service.worker.chunks import CHUNK_INTERVAL_S, merge_deltas
from service.worker.outbox import Outbox
from service.worker.scheduler import Scheduler
from tests.support.fake_engine import FakeEngine, manifest
from tests.support.serving import running_server


def test_a_stream_gets_its_first_text_at_once_then_fewer_bigger_chunks() -> None:
    clock = [0.0]
    engine = FakeEngine(manifest("prose", "stream"), slots=8)
    events: list[WorkerEvent] = []
    sched = Scheduler({"prose": engine}, lambda job, ev: events.append(ev), clock=lambda: clock[0])
    req = EngineRequest("r", "prose", ("",), sampling=SamplingParams(seed=1, max_new_tokens=40), n=2, stream=True)
    sched.admit(req, uid="r")
    steps = 0
    while not sched.idle():
        sched.fill()
        sched.step()
        steps += 1
        clock[0] += 0.002  # a 2 ms step
        if steps == 1:
            assert isinstance(events[-1], Chunk), events  # the first text: right after the first step
    chunks = [e for e in events if isinstance(e, Chunk)]
    assert isinstance(events[0], Accepted) and isinstance(events[-1], Final)
    assert steps == 40 and len(chunks) <= 1 + steps * 0.002 / CHUNK_INTERVAL_S + 1, len(chunks)  # not 40
    for i in range(2):  # nothing lost: each choice's 40 characters, in order, one delta per chunk
        assert sum(len(d.text) for c in chunks for d in c.deltas if d.index == i) == 40
        assert all(sum(d.index == i for d in c.deltas) <= 1 for c in chunks)


def test_a_lightly_loaded_models_answer_leaves_before_a_busy_models_step() -> None:
    """A 1-token request beside 8 long rows of another model: its model steps first (fewest live rows) and
    its events are sent right after that step, not after the busy model's step in the same iteration."""
    busy, light = FakeEngine(manifest("busy", "stream"), slots=8), FakeEngine(manifest("light", "stream"), slots=8)
    log: list[str] = []
    sched = Scheduler(
        {"busy": busy, "light": light}, lambda job, ev: log.append(f"{job.req.model}:{type(ev).__name__}")
    )
    long = EngineRequest("long", "busy", ("",), sampling=SamplingParams(seed=1, max_new_tokens=50), n=8)
    short = EngineRequest("short", "light", ("",), sampling=SamplingParams(seed=1, max_new_tokens=1))
    sched.admit(long, uid="long")
    sched.admit(short, uid="short")
    sched.fill()
    sched.step(stepped=lambda: log.append(f"sent after {len(busy.steps)} busy step(s)"))
    assert log.index("light:Final") < log.index("sent after 0 busy step(s)") < len(log) - 1, log
    assert log[-1] == "sent after 1 busy step(s)" and busy.steps == [8] and light.steps == [1]


def test_merge_keeps_what_cannot_be_joined() -> None:
    a, b = ChoiceDelta(0, "ab"), ChoiceDelta(1, "x")
    assert merge_deltas([a, b, ChoiceDelta(0, "c")]) == (ChoiceDelta(0, "abc"), b)
    scored = ChoiceDelta(0, "d", prompt_logprobs=(None,))
    assert merge_deltas([a, scored]) == (a, scored)  # a prompt's scores start a new delta: as they came


def test_the_server_measures_its_first_byte_next_to_the_sampling_ttft() -> None:
    with running_server() as srv:
        body = {"model": "names-gpt", "max_new_tokens": 8, "stream": True}
        with httpx.stream("POST", srv.url("/v1/generate"), json=body, timeout=30) as r:
            assert r.status_code == 200
            lines = list(r.iter_lines())
        assert "data: [DONE]" in lines
        metrics = httpx.get(srv.url("/metrics"), timeout=10).text
        count = re.search(r'^charlm_time_to_first_byte_seconds_count\{model="names-gpt"\} (\S+)$', metrics, re.M)
        assert count and float(count.group(1)) == 1.0, metrics[:500]
        assert re.search(r'^charlm_time_to_first_token_seconds_count\{model="names-gpt"\} 1\.0$', metrics, re.M)
        assert re.search(r"POST /v1/generate 200 .* first_byte_ms=[0-9.]+", srv.log())
        plain = httpx.post(srv.url("/v1/generate"), json={"model": "names-gpt"}, timeout=30)
        assert plain.status_code == 200  # not a stream: no first byte counted
        metrics = httpx.get(srv.url("/metrics"), timeout=10).text
        assert re.search(r'^charlm_time_to_first_byte_seconds_count\{model="names-gpt"\} 1\.0$', metrics, re.M)


def test_an_iterations_events_are_one_message_per_api_server_new_streams_first() -> None:
    old, new, other = (SimpleNamespace(uid=u, rqid=q) for u, q in (("old", 0), ("new", 0), ("other", 1)))
    box, sent = Outbox(), []
    tail, final = Chunk((ChoiceDelta(0, "z"),), 9), Final(0.0, 0.0, 0.0, 1, (), 9)
    head, first = Accepted(0.0), Chunk((ChoiceDelta(0, "a"),), 1)
    for job, event in ((old, tail), (other, tail), (new, head), (new, first), (old, final)):
        box.add(job, event)
    assert box.flush(lambda rqid, payload: sent.append((rqid, payload))) == 2
    assert sent == [(0, (("new", (head, first)), ("old", (tail, final)))), (1, (("other", (tail,)),))]
    assert box.flush(lambda *a: sent.append(a)) == 0 and len(sent) == 2  # the new stream's first text led


def test_the_mailbox_hands_each_request_its_events_and_the_put_does_not_stall_the_loop() -> None:
    """The put is a round trip to LitServe's manager process: it runs in a thread, and the API server's
    mailbox exists before it (an answer may come back before the put returns). The spec is the real one,
    given what LitSpec.setup gives it: LitServe's response buffer, request queue and data streamer."""
    puts: list[bool] = []
    spec = CharLMSpec()
    spec.response_buffer, spec.response_queue_id, spec.data_streamer = {}, 3, LitServer.data_streamer

    def slow_put(item: tuple) -> None:
        puts.append(mailbox_id(3) in spec.response_buffer and item[0] == 3 and isinstance(item[3], EngineRequest))
        time.sleep(0.3)

    spec.request_queue = SimpleNamespace(put=slow_put)
    client = LitServeClient(spec, SharedState(1, ["names"]))
    head, first, final = Accepted(0.0), Chunk((ChoiceDelta(0, "a"),), 1), Final(0.0, 0.0, 0.0, 1, (), 1)

    async def scenario() -> tuple[int, list[Any], Any]:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        task = asyncio.ensure_future(ticker())
        a = await client.open(EngineRequest("a", "names", ("",), stream=True))
        b = await client.open(EngineRequest("b", "names", ("",), stream=True))
        task.cancel()
        box = spec.response_buffer[mailbox_id(3)]
        box.response_queue.append(((("b", (head,)), ("gone", (head,)), ("a", (head, first))), LitAPIStatus.OK))
        box.event.set()
        got = [await a.next(1.0), await a.next(1.0), await b.next(1.0), await a.next(0.05)]
        await a.close()
        box.response_queue.append(((("a", (final,)), ("b", (final,))), LitAPIStatus.OK))
        box.event.set()
        return ticks, got, await b.next(1.0)

    ticks, got, last = asyncio.run(scenario())
    assert puts == [True, True] and ticks >= 20, ticks  # the loop ran on while each put took 0.3 s
    assert got == [head, first, head, None] and last == final  # in order, each to its own request


def test_the_mailbox_opens_again_after_an_error_status() -> None:
    """LitServe's data streamer ends on an ERROR status; the client registers the mailbox again, so the
    answers that follow still reach their requests."""
    spec = CharLMSpec()
    spec.response_buffer, spec.response_queue_id, spec.data_streamer = {}, 0, LitServer.data_streamer
    spec.request_queue = SimpleNamespace(put=lambda item: None)
    client = LitServeClient(spec, SharedState(1, ["names"]))
    head = Accepted(0.0)

    async def scenario() -> Any:
        a = await client.open(EngineRequest("a", "names", ("",), stream=True))
        first = spec.response_buffer[mailbox_id(0)]
        first.response_queue.append((None, LitAPIStatus.ERROR))
        first.event.set()
        for _ in range(100):
            await asyncio.sleep(0.01)
            if spec.response_buffer[mailbox_id(0)] is not first:
                break
        again = spec.response_buffer[mailbox_id(0)]
        assert again is not first, "the mailbox was not opened again"
        again.response_queue.append(((("a", (head,)),), LitAPIStatus.OK))
        again.event.set()
        return await a.next(1.0)

    assert asyncio.run(scenario()) == head


def test_litserves_auth_dependency_is_a_coroutine() -> None:
    """LitServe adds `authorize` (its default: a plain function) as a dependency of every route it
    registers; FastAPI runs a plain function in a thread pool, a hop per request before the handler."""
    assert asyncio.iscoroutinefunction(CharLMAPI.authorize)


def test_two_api_servers_each_get_their_own_answers() -> None:
    """Each API server's mailbox is keyed by the id LitServe gives its spec; with two of them every
    request, streamed or not, gets its own whole answer (a mix-up would hang one until its timeout)."""
    import concurrent.futures

    with running_server("--api-servers", "2") as srv:

        def one(i: int) -> tuple[int, str]:
            body = {"model": "names-gpt", "prompt": "", "max_tokens": 8, "seed": i, "stream": i % 2 == 0}
            r = httpx.post(srv.url("/v1/completions"), json=body, timeout=30)
            if body["stream"]:
                assert r.text.rstrip().endswith("data: [DONE]"), r.text
                return r.status_code, "".join(re.findall(r'"text":"([^"]*)"', r.text))
            return r.status_code, r.json()["choices"][0]["text"]

        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            got = list(pool.map(one, range(48)))
        again = [one(i) for i in (0, 1)]  # seeded: the same text alone as in the crowd
    assert all(status == 200 and text for status, text in got), got
    assert again == got[:2]
