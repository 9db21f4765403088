"""`novel_only` in the real Scheduler over a fake engine whose "training data" the test chooses: which
attempts are discarded, their bound, seeds, usage, held-back streaming and cancellation, in milliseconds.
tests/service/test_novelty_http.py checks the same on the shipped names-gpt through a real server."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from engine import SamplingParams
from service.protocol import MAX_ATTEMPTS, Chunk, EngineRequest, Final, WorkerEvent
from service.worker.scheduler import Scheduler
from tests.support.fake_engine import FakeEngine, make_app, manifest


def run(
    req: EngineRequest, data: Callable[[str], bool], steps: int | None = None
) -> tuple[Scheduler, FakeEngine, list[WorkerEvent]]:
    """Run `req` to its end (or for `steps` iterations) on a fake names model with `data` as its data."""
    engine = FakeEngine(manifest("names"), slots=8, data=data)
    events: list[WorkerEvent] = []
    sched = Scheduler({"names": engine}, lambda job, ev: events.append(ev))
    sched.admit(req, uid=req.rid)
    for _ in range(steps if steps is not None else 10_000):
        if sched.idle():
            break
        sched.expire()
        sched.fill()
        sched.step()
    return sched, engine, events


def final(events: list[WorkerEvent]) -> Final:
    assert isinstance(events[-1], Final), events[-1]
    return events[-1]


def test_copies_are_sampled_again_with_reproducible_seeds() -> None:
    plain = final(run(EngineRequest("a", "names", ("k",), n=6, sampling=SamplingParams(seed=3)), lambda s: False)[2])
    first = {"k" + c.text for c in plain.choices}  # the data: exactly what the first attempts sample
    req = EngineRequest("b", "names", ("k",), n=6, novel_only=True, sampling=SamplingParams(seed=3))
    _, engine, events = run(req, first.__contains__)
    out = final(events)
    assert all(c.novel is True and "k" + (c.text or "") not in first for c in out.choices)
    assert all(len(rid) == 3 and rid[2] == 1 for rid in engine.added[6:]), "one more attempt per choice"
    assert out.completion_tokens == plain.completion_tokens + sum(c.completion_tokens for c in out.choices)
    again = final(run(req, first.__contains__)[2])
    assert [c.text for c in again.choices] == [c.text for c in out.choices]
    assert out.choices[0].logprobs is None, "the logprobs it needs for the boundary are not returned"


def test_after_max_attempts_the_last_copy_comes_back_marked() -> None:
    req = EngineRequest("c", "names", ("", "a"), n=2, novel_only=True, sampling=SamplingParams(seed=1))
    _, engine, events = run(req, lambda s: True)
    out = final(events)
    assert [c.novel for c in out.choices] == [False] * 4
    assert len(engine.added) == 4 * MAX_ATTEMPTS
    greedy = EngineRequest("g", "names", ("",), novel_only=True, sampling=SamplingParams(temperature=0))
    assert len(run(greedy, lambda s: True)[1].added) == 1, "greedy cannot sample anything else"


def test_a_sample_cut_by_length_is_kept() -> None:
    req = EngineRequest("d", "names", ("",), n=3, novel_only=True, sampling=SamplingParams(seed=2, max_new_tokens=2))
    _, engine, events = run(req, lambda s: True)
    assert [c.finish_reason for c in final(events).choices] == ["length"] * 3 and len(engine.added) == 3


def test_stream_sends_only_the_kept_attempt_in_one_piece() -> None:
    plain = final(run(EngineRequest("a", "names", ("m",), n=3, sampling=SamplingParams(seed=9)), lambda s: False)[2])
    first = {"m" + (c.text or "") for c in plain.choices}
    req = EngineRequest(
        "e",
        "names",
        ("m",),
        n=3,
        stream=True,
        novel_only=True,
        sampling=SamplingParams(seed=9, logprobs=0, prompt_logprobs=True),
    )
    _, engine, events = run(req, first.__contains__)
    deltas = [d for ev in events if isinstance(ev, Chunk) for d in ev.deltas]
    assert sorted(d.index for d in deltas) == [0, 1, 2], "one delta per choice, its whole text"
    assert len(engine.added) == 6
    for d in deltas:
        assert "m" + d.text not in first and d.logprobs is not None and len(d.logprobs) == len(d.text)
        assert d.boundary is not None and d.prompt_logprobs is not None
    out = final(events)
    assert [c.novel for c in out.choices] == [True] * 3
    kept = sum(len(d.text) + 1 for d in deltas)  # text + boundary
    assert out.completion_tokens == plain.completion_tokens + kept
    assert [ev.completion_tokens for ev in events if isinstance(ev, Chunk)][-1] == out.completion_tokens


@pytest.mark.parametrize("how", ["cancel", "deadline"])
def test_cancel_and_deadline_abort_a_choice_being_resampled(how: str) -> None:
    now = [0.0]
    engine = FakeEngine(manifest("names"), slots=8, data=lambda s: True)
    events: list[WorkerEvent] = []
    sched = Scheduler({"names": engine}, lambda job, ev: events.append(ev), clock=lambda: now[0])
    sched.admit(
        EngineRequest("f", "names", ("",), n=2, novel_only=True, deadline=5.0, sampling=SamplingParams(seed=4)), uid="f"
    )
    while not any(len(rid) == 3 for rid in engine.seqs):  # until a later attempt runs
        sched.fill()
        sched.step()
    sched.step()  # one more: some attempt may be finishing and queued again
    if how == "cancel":
        sched.cancel("f")
    else:
        now[0] = 6.0
        sched.expire()
    sched.fill()
    assert sched.idle() and not engine.seqs and not sched.waiting
    assert not any(isinstance(ev, Final) for ev in events)


def test_http_refusals_name_the_field() -> None:
    async def main() -> list[Any]:
        app, _, _ = make_app()
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            return [
                await http.post("/v1/generate", json={"model": "names", "novel_only": True}),
                await http.post("/v1/completions", json={"model": "prose", "novel_only": True}),
                await http.post(
                    "/v1/chat/completions",
                    json={"model": "names", "messages": [{"role": "user", "content": "a"}], "novel_only": True},
                ),
            ]

    for r, why in zip(asyncio.run(main()), ("no hashes", "`stream` model", "chat"), strict=True):
        assert r.status_code == 400, r.text
        err = r.json()["error"]
        assert err["param"] == "novel_only", err
        assert why.split()[-1] in err["message"] or why == "chat", err
