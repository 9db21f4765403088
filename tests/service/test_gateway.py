"""The HTTP layer in-process: the real routes, gateway, scheduler and response models over a fake engine.

No model, no worker process, no socket: each test runs the FastAPI app through httpx's ASGI transport,
so the whole request path (validation, admission, deadline, drain, SSE framing, the error contract) is
checked in well under a second. tests/service/test_service_http.py runs the same contract through a real server.
"""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest

from engine import SamplingParams
from service.protocol import EngineRequest, Final
from service.shared import SharedState
from service.worker.scheduler import Scheduler
from tests.support.fake_engine import CMPL, GEN, FakeEngine, manifest, run, sse


def test_generate_shape_text_includes_prompt() -> None:
    async def scenario(http: httpx.AsyncClient) -> None:
        r = await http.post(GEN, json={"model": "names", "prompt": "ka", "n": 3, "seed": 4})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["id"].startswith("gen-") and body["model"] == "names"
        assert [c["index"] for c in body["choices"]] == [0, 1, 2]
        assert all(c["text"].startswith("ka") and c["finish_reason"] == "stop" for c in body["choices"])
        assert body["usage"]["prompt_tokens"] == 2 and body["usage"]["completion_tokens"] >= 3 * 4
        t = body["timing"]
        assert 0 <= t["queue_ms"] <= t["first_token_ms"] <= t["total_ms"]

    run(scenario)


def test_completions_shape_echo_and_prompt_lists() -> None:
    async def scenario(http: httpx.AsyncClient) -> None:
        native = (await http.post(GEN, json={"model": "names", "prompt": "ka", "n": 2, "seed": 9})).json()
        r = await http.post(CMPL, json={"model": "names", "prompt": "ka", "n": 2, "seed": 9})
        body = r.json()
        assert body["object"] == "text_completion" and body["id"].startswith("cmpl-")
        for c, n in zip(body["choices"], native["choices"], strict=True):
            assert set(c) == {"text", "index", "logprobs", "finish_reason"}
            assert "ka" + c["text"] == n["text"]
        assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + body["usage"]["completion_tokens"]
        echo = (await http.post(CMPL, json={"model": "names", "prompt": "ka", "n": 2, "seed": 9, "echo": True})).json()
        assert [c["text"] for c in echo["choices"]] == [c["text"] for c in native["choices"]]
        multi = (await http.post(CMPL, json={"model": "names", "prompt": ["a", "b"], "n": 2, "echo": True})).json()
        assert [c["text"][0] for c in multi["choices"]] == ["a", "a", "b", "b"]

    run(scenario)


@pytest.mark.parametrize("route", [GEN, CMPL])
def test_stream_joins_to_the_plain_text(route: str) -> None:
    async def scenario(http: httpx.AsyncClient) -> None:
        body = {"model": "prose", "prompt": "To", "n": 2, "seed": 5}
        body["max_new_tokens" if route == GEN else "max_tokens"] = 12
        plain = (await http.post(route, json=body)).json()
        extra = {} if route == GEN else {"stream_options": {"include_usage": True}}
        r = await http.post(route, json={**body, "stream": True, **extra})
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = sse(r)
        assert events[-1] == "[DONE]"
        if route == CMPL:  # OpenAI's usage chunk: no choices; every other chunk has usage null
            usage = events.pop(-2)
            assert usage["choices"] == [] and all(e["usage"] is None for e in events[:-2])
            events[-2]["usage"] = usage["usage"]
        final = events[-2]
        texts = ["", ""]
        for e in events[:-2]:
            assert len(e["choices"]) == 1 and e["choices"][0]["finish_reason"] is None
            texts[e["choices"][0]["index"]] += e["choices"][0]["text"]
        assert texts == [c["text"] for c in plain["choices"]]
        assert [c["finish_reason"] for c in final["choices"]] == ["length", "length"]
        assert final["usage"] == plain["usage"] and final["usage"]["completion_tokens"] == 24

    run(scenario)


def test_client_mistakes_are_4xx_with_the_error_shape() -> None:
    async def scenario(http: httpx.AsyncClient) -> None:
        cases = [
            (GEN, {"model": "nope"}, 404, "model_not_found"),
            (GEN, {"model": "names", "prompt": "K!"}, 400, "invalid_prompt"),
            (GEN, {"model": "names", "prompt": "a.b"}, 400, "invalid_prompt"),
            (GEN, {"model": "names", "temperature": -1}, 400, "invalid_value"),
            (GEN, {"model": "names", "max_tokens": 3}, 400, "unknown_parameter"),
            (CMPL, {"model": "names", "logprobs": 28}, 400, "invalid_value"),
            (CMPL, {"model": "names", "prompt": [1, 99]}, 400, "invalid_value"),
            (CMPL, {"model": "names", "n": 3, "best_of": 2}, 400, "invalid_value"),
            (CMPL, {"model": "names", "presence_penalty": 2.5}, 400, "invalid_value"),
            (CMPL, {"model": "names", "repetition_penalty": 0}, 400, "invalid_value"),
            (CMPL, {"model": "names", "logit_bias": {"27": 1}}, 400, "invalid_value"),
            (CMPL, {"model": "names", "logit_bias": {"1": 101}}, 400, "invalid_value"),
            (CMPL, {"model": "names", "suffix": "x"}, 400, "unsupported_parameter"),
            (GEN, {"model": "names", "logprobs": -1}, 400, "invalid_value"),
            (CMPL, {"model": "names", "prompt": "Q", "stream": True}, 400, "invalid_prompt"),
        ]
        for route, body, status, code in cases:
            r = await http.post(route, json=body)
            assert r.status_code == status, (body, r.text)
            assert r.headers["content-type"].startswith("application/json")
            assert r.json()["error"]["code"] == code and set(r.json()["error"]) == {"message", "type", "param", "code"}
        missing = (await http.post(GEN, json={"model": "nope"})).json()["error"]["message"]
        assert "names" in missing and "prose" in missing and "broken" not in missing
        assert "'K'" in (await http.post(GEN, json={"model": "names", "prompt": "K!"})).json()["error"]["message"]

    run(scenario)


def test_a_prompt_the_worker_refuses_fails_alone() -> None:
    engines = {"names": FakeEngine(manifest("names"), reject="z"), "prose": FakeEngine(manifest("prose", "stream"))}

    async def scenario(http: httpx.AsyncClient) -> None:
        good = [http.post(GEN, json={"model": "names", "prompt": "a", "seed": i}) for i in range(4)]
        bad = http.post(GEN, json={"model": "names", "prompt": "az"})
        bad_stream = http.post(GEN, json={"model": "names", "prompt": "z", "stream": True})
        *oks, refused, refused_stream = await asyncio.gather(*good, bad, bad_stream)
        assert [r.status_code for r in oks] == [200] * 4
        assert refused.status_code == 400 and refused.json()["error"]["code"] == "invalid_prompt"
        assert refused_stream.status_code == 400  # the stream never started: a plain JSON error

    run(scenario, engines=engines)


def test_an_engine_failure_is_a_500_without_a_traceback() -> None:
    engines = {"names": FakeEngine(manifest("names"), fail_on_step=True)}

    async def scenario(http: httpx.AsyncClient) -> None:
        r = await http.post(GEN, json={"model": "names"})
        assert r.status_code == 500 and r.json()["error"]["code"] == "internal_error"
        assert "Traceback" not in r.text

    run(scenario, engines=engines)


def test_a_short_request_finishes_while_long_ones_run() -> None:
    async def scenario(http: httpx.AsyncClient) -> None:
        long = [
            asyncio.ensure_future(http.post(GEN, json={"model": "prose", "n": 2, "max_new_tokens": 400}))
            for _ in range(2)
        ]
        await asyncio.sleep(0.05)
        t0 = time.monotonic()
        short = await http.post(GEN, json={"model": "names", "max_new_tokens": 1})
        took = time.monotonic() - t0
        assert short.status_code == 200 and short.json()["usage"]["completion_tokens"] == 1
        assert not any(f.done() for f in long), "the short request waited for the long ones"
        assert took < 0.2, took
        assert all(r.status_code == 200 for r in await asyncio.gather(*long))

    run(scenario)


def test_more_choices_than_slots_queue_for_slots_and_join_running_steps() -> None:
    engines = {"names": FakeEngine(manifest("names"), slots=3)}

    async def scenario(http: httpx.AsyncClient) -> None:
        r = await http.post(GEN, json={"model": "names", "n": 8, "seed": 1})
        assert r.status_code == 200 and len(r.json()["choices"]) == 8
        assert max(engines["names"].steps) == 3  # never more than the slots, refilled as choices end

    run(scenario, engines=engines)


def test_deadline_is_504_and_the_request_is_cancelled() -> None:
    async def scenario(http: httpx.AsyncClient) -> None:
        slow = {"model": "prose", "max_new_tokens": 2000}
        r = await http.post(GEN, json=slow)
        assert r.status_code == 504 and r.json()["error"]["type"] == "timeout_error"
        s = await http.post(GEN, json={**slow, "stream": True})
        assert s.status_code == 200
        last = sse(s)[-1]
        assert last["error"]["code"] == "timeout"
        client = http.engine_client  # type: ignore[attr-defined]
        assert len(client.cancelled) == 2 and client.scheduler.idle()
        assert http.info.shared.in_flight.value == 0  # type: ignore[attr-defined]

    run(scenario, timeout=0.4, step_s=0.002)


def test_queue_cap_is_503_with_retry_after() -> None:
    async def scenario(http: httpx.AsyncClient) -> None:
        long = asyncio.ensure_future(http.post(GEN, json={"model": "prose", "max_new_tokens": 300}))
        await asyncio.sleep(0.05)
        r = await http.post(GEN, json={"model": "names"})
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert r.json()["error"]["code"] == "queue_full"
        assert (await long).status_code == 200
        assert (await http.post(GEN, json={"model": "names"})).status_code == 200

    run(scenario, max_queue=1)


def test_admission_by_finish_time_refuses_what_cannot_finish_in_time() -> None:
    async def scenario(http: httpx.AsyncClient) -> None:
        speed = http.info.shared.speed  # type: ignore[attr-defined]
        speed.slots = 4  # the fake engine's
        for size in (1, 4):
            speed.record_step(0, "prose", size, 0.002)  # measured: 2 ms per step
        first = asyncio.ensure_future(http.post(GEN, json={"model": "prose", "n": 4, "max_new_tokens": 500}))
        await asyncio.sleep(0.02)  # 4 slots taken, 2,000 tokens ahead
        r = await http.post(GEN, json={"model": "prose", "n": 4, "max_new_tokens": 1000})  # ~3 s: over 3 / 1.25
        assert r.status_code == 503 and r.json()["error"]["code"] == "overloaded", r.text
        assert int(r.headers["retry-after"]) >= 1
        small = await http.post(GEN, json={"model": "prose", "max_new_tokens": 20})  # waits for a slot: ~1 s
        assert small.status_code == 200
        never = await http.post(GEN, json={"model": "prose", "max_new_tokens": 2000})  # 4 s even when idle
        assert never.status_code == 400 and never.json()["error"]["code"] == "exceeds_timeout", never.text
        assert "retry-after" not in never.headers
        first.cancel()

    run(scenario, timeout=3)


def test_drain_refuses_new_requests_and_cut_ends_running_ones_properly() -> None:
    async def scenario(http: httpx.AsyncClient) -> None:
        shared = http.info.shared  # type: ignore[attr-defined]
        running = asyncio.ensure_future(http.post(GEN, json={"model": "prose", "max_new_tokens": 2000, "stream": True}))
        plain = asyncio.ensure_future(http.post(GEN, json={"model": "prose", "max_new_tokens": 2000}))
        await asyncio.sleep(0.1)
        shared.draining.value = 1
        ready = await http.get("/ready")
        assert ready.status_code == 503 and ready.json()["reason"] == "shutting down"
        refused = await http.post(GEN, json={"model": "names"})
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "shutting_down"
        assert "retry-after" in refused.headers
        shared.cut.value = 1
        stream, body = await running, await plain
        assert sse(stream)[-1]["error"]["code"] == "shutting_down"
        assert body.status_code == 503 and body.json()["error"]["code"] == "shutting_down"
        assert shared.in_flight.value == 0

    run(scenario, step_s=0.002)


def test_ready_models_metrics_and_openapi() -> None:
    async def scenario(http: httpx.AsyncClient) -> None:
        await http.post(GEN, json={"model": "names", "max_new_tokens": 5, "seed": 1})
        ready = (await http.get("/ready")).json()
        assert ready["status"] == "ready" and ready["failed"] == {"broken": "no manifest.json"}
        assert ready["workers"]["worker_0"]["last_step_age_s"] < 5
        cards = (await http.get("/v1/models")).json()["data"]
        assert {c["id"] for c in cards} == {"names", "prose"}
        text = (await http.get("/metrics")).text
        for name in ("charlm_time_per_output_token_seconds", "charlm_batch_size", "charlm_requests_total"):
            assert name in text
        spec = (await http.get("/openapi.json")).json()
        assert {GEN, CMPL} <= set(spec["paths"])
        assert "prompt" in spec["paths"][GEN]["post"]["description"]
        assert "GenerateRequest" in json.dumps(spec["paths"][GEN]["post"]["requestBody"])
        assert "GenerateResponse" in json.dumps(spec["paths"][GEN]["post"]["responses"])

    run(scenario)


def test_stalled_worker_is_reported() -> None:
    shared = SharedState(2, ["m"])
    shared.state[0] = shared.state[1] = 1
    now = time.monotonic()
    shared.beat[0], shared.beat[1] = now, now - 30
    assert shared.stalled(10, now) == []  # worker 1 is old but has nothing to do
    shared.live[1] = 3
    assert shared.stalled(10, now) == [1]


def test_scheduler_seeds_are_the_same_alone_and_in_a_batch() -> None:
    def texts(reqs: list[EngineRequest]) -> dict[str, tuple]:
        out: dict[str, tuple] = {}
        sched = Scheduler(
            {"names": FakeEngine(manifest("names"), slots=8)}, lambda job, ev: out.__setitem__(job.uid, ev)
        )
        for r in reqs:
            sched.admit(r, uid=r.rid)
        while not sched.idle():
            sched.fill()
            sched.step()
        return {rid: tuple(c.text for c in ev.choices) for rid, ev in out.items() if isinstance(ev, Final)}

    target = EngineRequest("t", "names", ("a",), n=3, sampling=SamplingParams(seed=11))
    alone = texts([target])["t"]
    crowd = [EngineRequest(f"o{i}", "names", ("b",), n=2, sampling=SamplingParams(seed=i)) for i in range(5)]
    assert texts([*crowd[:2], target, *crowd[2:]])["t"] == alone
