"""Admission by each request's own finish time (service/speed.py, service/shared.py).

In-process: the estimate over a SpeedBoard (interpolation, the wait for full slots, other models'
steps). On the real server: a 1-token names-gpt request beside two n=64 x 2048 shakespeare-gpt
requests is admitted and answered quickly, on a fresh server (step times measured before /ready) and
a warm one; an overload burst ends with 0 admitted requests timing out, and what can never fit gets 400.
"""

from __future__ import annotations

import concurrent.futures
import json
import socket
import statistics
import threading
import time
from pathlib import Path

import httpx
import pytest

from service.shared import SAFETY, SharedState
from service.speed import NO_LIMIT, SpeedBoard
from tests.support.serving import ServerProcess, start_server

# ----- the estimate, in-process -----


def board(slots: int = 8) -> SpeedBoard:
    b = SpeedBoard(1, ["big", "small"], slots)
    for size, ms in ((1, 1.0), (4, 2.0), (8, 4.0)):
        b.record_step(0, "big", size, ms / 1000)
    b.record_step(0, "small", 1, 0.0005)
    return b


def test_step_times_interpolate_and_extrapolate_pessimistically() -> None:
    b = board()
    assert b.step_time(0, "big", 1) == pytest.approx(0.001)
    assert b.step_time(0, "big", 6) == pytest.approx(0.003)  # between 4 (2 ms) and 8 (4 ms)
    assert b.step_time(0, "big", 16) == pytest.approx(0.008)  # above: proportional
    assert b.step_time(0, "small", 64) == pytest.approx(0.032)
    assert b.step_time(0, "nobody", 1) is None


def test_one_stalled_step_in_a_fresh_bucket_cannot_refuse_for_ever() -> None:
    """CI's case: start-up measured 1, 16 and 128 rows; the burst's first step at 8 rows stalled (45 ms).
    The idle estimate backs a permanent 400, so it takes the best step of any bigger batch instead,
    while the recent times still rise with the stall (a retryable 503)."""
    b = SpeedBoard(1, ["big"], 128)
    for size, ms in ((1, 0.843), (16, 18.67), (128, 16.97), (8, 45.28)):
        b.record_step(0, "big", size, ms / 1000)
    assert b.step_time(0, "big", 8, best=True) == pytest.approx(0.01697)  # 128 rows took no longer
    assert b.step_time(0, "big", 4, best=True) == pytest.approx(0.000843 + (0.01697 - 0.000843) * 3 / 7)
    assert b.step_time(0, "big", 8) == pytest.approx(0.04528)  # recent: the stall counts, up to 16 too
    assert b.step_time(0, "big", 16) == pytest.approx(0.04528)
    _, idle, _ = b.estimate(0, "big", 8, 256, 1.0)  # type: ignore[misc]
    assert idle < 10 / 2, idle  # an n=8 x 256 request fits an idle server's 10 s


def test_a_request_is_weighed_by_the_batch_it_joins_not_the_queue() -> None:
    b = board()
    b.post_load(0, {"big": (8, 8 * 2000.0)})  # big's slots full, 16,000 tokens ahead
    now, idle, iteration = b.estimate(0, "small", 1, 1, 1.0)  # type: ignore[misc]
    assert now == iteration == pytest.approx(0.0005 + 0.004)  # one round: its own step and big's at 8
    assert idle == pytest.approx(0.0005)
    now, _, _ = b.estimate(0, "big", 1, 10, 1.0)  # type: ignore[misc]
    assert now == pytest.approx((16000 + 10) / 8 * 0.004)  # waits for big's slots to work through
    b.admit(1, 3, 30, 1.0)  # admitted small ones no worker took yet
    now, _, _ = b.estimate(0, "big", 1, 10, 1.0)  # type: ignore[misc]
    assert now == pytest.approx((16000 + 10) / 8 * (0.004 + b.step_time(0, "small", 3)))


def test_pending_is_what_was_admitted_less_what_the_workers_took_and_takes_no_lock() -> None:
    """Each worker counts what it takes in its own row, with no lock: a worker killed at any moment
    leaves no lock held for the API servers to wait on for ever."""
    shared = SharedState(2, ["big", "small"])
    speed = shared.speed
    assert shared.admit(2, 20, "small", 60.0, 10)[1] is None
    assert shared.admit(1, 5, "small", 60.0, 10)[1] is None
    assert speed.pending(1) == (3, 25) and speed.pending(0) == (0, 0)
    assert speed.bearable_s(0) == pytest.approx(60.0 / SAFETY / 10)  # the tighter of the two budgets
    with shared.in_flight.get_lock():  # held, as by a process killed inside it
        done = threading.Thread(target=shared.taken, args=(1, "small", 2, 20))
        done.start()
        done.join(5)
        assert not done.is_alive()
    assert speed.pending(1) == (1, 5)
    shared.taken(0, "small", 1, 5)
    assert speed.pending(1) == (0, 0) and speed.bearable_s(0) == NO_LIMIT
    shared.taken(0, "small", 1, 5)  # one its client left before a worker took it: never below zero
    assert speed.pending(1) == (0, 0)
    assert shared.admit(1, 7, "small", 60.0, 10)[1] is None
    assert speed.pending(1) == (1, 7)  # counted from zero again
    for _ in range(3):
        shared.release(0.0)
    assert shared.in_flight.value == 0 and speed.pending(1) == (0, 0)  # idle: what was never taken goes


# ----- the real server -----

BIG = {"model": "shakespeare-gpt", "n": 64, "max_tokens": 2048}


def _big_requests(srv: ServerProcess) -> list[socket.socket]:
    """The two big requests, each on a raw socket: not streamed, so nothing comes back until they end;
    closing the socket cancels the request (the server notices the client is gone)."""
    socks = []
    for seed in range(2):
        body = json.dumps({**BIG, "seed": seed, "prompt": ""}).encode()
        sock = socket.create_connection(("127.0.0.1", srv.port), timeout=30)
        head = "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        sock.sendall(f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body)
        socks.append(sock)
    deadline = time.monotonic() + 60
    while httpx.get(srv.url("/ready"), timeout=10).json()["workers"]["worker_0"]["sequences"] < 128:
        assert time.monotonic() < deadline, "the two big requests never both ran"
        time.sleep(0.05)
    return socks


def _probe(srv: ServerProcess, tries: int = 15) -> tuple[list[int], list[float], float]:
    """1-token names-gpt requests, one at a time: their statuses, the server's total_ms of each, and
    shakespeare-gpt's measured ms per step at batch 128 (what a new request waits for at most)."""
    statuses, server_ms = [], []
    with httpx.Client(timeout=30) as client:
        for _ in range(tries):
            r = client.post(srv.url("/v1/generate"), json={"model": "names-gpt", "max_new_tokens": 1})
            statuses.append(r.status_code)
            if r.status_code == 200:
                server_ms.append(r.json()["timing"]["total_ms"])
            time.sleep(0.05)
    steps = httpx.get(srv.url("/ready"), timeout=10).json()["workers"]["worker_0"]["step_ms"]["shakespeare-gpt"]
    return statuses, server_ms, max(steps.values())


def _p(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[q - 1] if len(values) > 1 else values[0]


def test_a_1_token_request_is_answered_beside_two_n64_x_2048_requests_fresh_and_warm() -> None:
    # the big ones fit an hour, not the default 30 s; and the token cap is raised to admit them (64 x 2048)
    srv = start_server("--timeout", "3600", "--max-request-tokens", str(64 * 2048))
    try:
        for phase in ("fresh", "warm"):
            socks = _big_requests(srv)
            statuses, server_ms, step_ms = _probe(srv)
            for sock in socks:
                sock.close()
            p50, p99 = _p(server_ms, 50), _p(server_ms, 99)
            print(
                f"{phase}: 1-token requests {statuses.count(200)}/{len(statuses)} admitted; server-side ms "
                f"p50 {p50:.1f} p99 {p99:.1f}; shakespeare step at 128: {step_ms:.1f} ms"
            )
            assert statuses == [200] * len(statuses), statuses  # was: 503 overloaded, 10 of 10
            # 50 ms is the bound; on 2 loaded shared cores one shakespeare step at batch 128
            # alone can take longer, and a new request waits for the step in progress and its own.
            assert p50 <= max(50.0, 2.5 * step_ms), (p50, step_ms, server_ms)
            deadline = time.monotonic() + 30
            while httpx.get(srv.url("/ready"), timeout=10).json()["in_flight"]:  # the big ones cancelled
                assert time.monotonic() < deadline
                time.sleep(0.1)
            for _ in range(3):  # warm: ordinary traffic between the phases
                r = httpx.post(srv.url("/v1/generate"), json={"model": "shakespeare-gpt", "n": 4}, timeout=60)
                assert r.status_code == 200
    finally:
        srv.stop(9)
    srv.remove_log()


def _steps(srv: ServerProcess) -> dict[str, float]:
    return httpx.get(srv.url("/ready"), timeout=10).json()["workers"]["worker_0"]["step_ms"]["shakespeare-gpt"]


def test_an_overload_burst_ends_with_no_admitted_request_timing_out() -> None:
    srv = start_server("--timeout", "10", "--max-request-tokens", str(64 * 2048))  # refused by time, not size
    try:
        never = httpx.post(srv.url("/v1/completions"), json={**BIG, "prompt": ""}, timeout=30)
        assert never.status_code == 400 and never.json()["error"]["code"] == "exceeds_timeout", never.text
        assert "retry-after" not in never.headers
        body = {"model": "shakespeare-gpt", "n": 8, "max_tokens": 256}
        before = _steps(srv)

        def one(seed: int) -> tuple[int, str | None, float]:
            t0 = time.monotonic()
            r = httpx.post(srv.url("/v1/completions"), json={**body, "seed": seed, "prompt": ""}, timeout=60)
            code = r.json()["error"]["code"] if r.status_code != 200 else None
            if r.status_code == 503:
                assert int(r.headers["retry-after"]) >= 1
            return r.status_code, code, time.monotonic() - t0

        with concurrent.futures.ThreadPoolExecutor(32) as pool:
            results = list(pool.map(one, range(48)))
        after = _steps(srv)
        outcomes = [(s, c) for s, c, _ in results]
        admitted = [round(t, 1) for s, _, t in results if s == 200]
        # What the estimate was made with (start-up) against what the burst then measured, batch <= 32: the
        # median over those batches, since one batch's reading can come from a single step that also
        # prefilled (b=16: 4.0 -> 18.8 ms on a quiet machine) while the machine itself did not slow.
        drift = statistics.median(after[b] / before[b] for b in before if int(b) <= 32)
        print("burst of 48:", {k: outcomes.count(k) for k in set(outcomes)}, "admitted took (s):", admitted)
        print(f"step times before {before}, after {after}: slowed {drift:.2f}x")
        assert all(s in (200, 503, 504) for s, _ in outcomes) and (200, None) in outcomes, outcomes
        assert outcomes.count((503, "overloaded")) > 0, outcomes  # the rest were refused at once
        refused = [t for s, _, t in results if s == 503]
        assert max(refused) < 10, refused  # fast, not after waiting
        if drift > SAFETY:  # the machine (2 shared cores) slowed down more than the margin mid-burst
            pytest.skip(f"steps slowed {drift:.1f}x during the burst (margin {SAFETY}x): the estimate was wrong")
        assert (504, "timeout") not in outcomes, outcomes
    finally:
        srv.stop(9)
    srv.remove_log()


def test_a_step_that_prefills_is_not_taken_for_a_decode_steps_time() -> None:
    """Admission estimates a request by the decode step time at the batch it joins; a step that also
    prefilled rows costs more (one b=8 reading of 49 ms, against ~2 ms, made an idle server answer
    n=8 x 256 with 400 exceeds_timeout). The scheduler says which steps prefilled, and the loop records
    only the others (service/worker/loop.py)."""
    from contract.repository import scan_repository
    from engine import Engine, SamplingParams
    from service.protocol import EngineRequest
    from service.worker.scheduler import Scheduler

    entry = scan_repository(Path(__file__).resolve().parents[2] / "models").models["names-gpt"]
    sched = Scheduler({"names-gpt": Engine.load(entry, slots=4)}, lambda job, ev: None)
    params = SamplingParams(seed=1, max_new_tokens=6)
    for rid in ("a", "b"):
        sched.admit(EngineRequest(rid, "names-gpt", ("em",), sampling=params), uid=rid)
        sched.fill()
        sched.step()
    sched.step()
    assert [(size, prefilled) for _, size, _, prefilled in sched.timings] == [(1, True), (2, True), (2, False)]
