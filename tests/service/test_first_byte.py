"""The first byte: a stream's text leaves the worker at once, then at most every CHUNK_INTERVAL_S
(service/worker/chunks.py), in-process over a fake engine with a fake clock; and the server-side first-byte
measure (charlm_time_to_first_byte_seconds, first_byte_ms on the access line) on the real server."""

from __future__ import annotations

import re

import httpx

from engine import SamplingParams
from service.protocol import Accepted, ChoiceDelta, Chunk, EngineRequest, Final, WorkerEvent
from service.worker.chunks import CHUNK_INTERVAL_S, merge_deltas
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
