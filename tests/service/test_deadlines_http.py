"""Deadlines, the bounded queue and cancellation through the real server: 503 when full, 504 past the timeout (an
SSE error event once a stream started), a client that leaves is cancelled on the worker."""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import signal
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.support.http import GEN, NAMES, SHAKESPEARE, metric, wait_for_metric
from tests.support.serving import MODELS, Server, running_server

LONG = {"model": SHAKESPEARE, "n": 16, "max_new_tokens": 2048, "seed": 1}  # 32,768 tokens: the cap


def test_client_disconnect_cancels_the_request(server: Server) -> None:
    def cancelled() -> float:
        return metric(httpx.get(server.url("/metrics")).text, "charlm_requests_cancelled_total", model=SHAKESPEARE)

    before = cancelled()
    long = {**LONG, "n": 16, "max_new_tokens": 500}  # admitted: it fits the 30 s timeout
    with pytest.raises(httpx.ReadTimeout):  # the client gives up waiting and closes the connection
        httpx.post(server.url(GEN), json=long, timeout=httpx.Timeout(30, read=0.5))
    wait_for_metric(server, "charlm_requests_cancelled_total", lambda v: v >= before + 1, model=SHAKESPEARE)
    with httpx.stream("POST", server.url(GEN), json={**long, "stream": True}, timeout=30) as r:
        assert r.status_code == 200
        next(r.iter_bytes())  # the stream is flowing; now hang up
    wait_for_metric(server, "charlm_requests_cancelled_total", lambda v: v >= before + 2, model=SHAKESPEARE)
    wait_for_metric(server, "charlm_requests_in_flight", lambda v: v == 0)


@pytest.fixture(scope="module")
def tight_server():
    env = {"CHARLM_MAX_QUEUE": "2", "CHARLM_TIMEOUT": "1.5"}
    with running_server(models=MODELS, env=env) as srv:
        yield srv


@contextlib.contextmanager
def stopped_worker(srv: Server) -> Iterator[None]:
    """The worker stopped (SIGSTOP): admitted requests cannot finish, whatever admission estimated."""
    (worker,) = srv.worker_pids()
    os.kill(worker, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(worker, signal.SIGCONT)


def test_queue_full_is_503_with_retry_after_and_timeout_is_504(tight_server: Server) -> None:
    fits = {"model": SHAKESPEARE, "n": 2, "max_new_tokens": 20}  # admitted: it fits the 1.5 s timeout
    pool = concurrent.futures.ThreadPoolExecutor(2)
    with pool, httpx.Client(base_url=tight_server.base_url) as c, stopped_worker(tight_server):
        long = [pool.submit(c.post, GEN, json=fits, timeout=30) for _ in range(2)]
        time.sleep(0.5)  # both admitted: the queue (2) is full
        full = c.post(GEN, json={"model": NAMES}, timeout=30)
        assert full.status_code == 503, full.text
        assert full.headers["retry-after"] == "1"
        assert full.json()["error"]["code"] == "queue_full"
        timed_out = [f.result() for f in long]
    for r in timed_out:
        assert r.status_code == 504 and r.json()["error"]["type"] == "timeout_error"
    # ... and dropped by the worker once it runs again, not run:
    wait_for_metric(tight_server, "charlm_requests_cancelled_total", lambda v: v >= 2, model=SHAKESPEARE)
    ok = httpx.post(tight_server.url(GEN), json={"model": NAMES, "seed": 1}, timeout=30)
    assert ok.status_code == 200


def test_stream_past_its_deadline_ends_with_an_error_event(tight_server: Server) -> None:
    body = {"model": SHAKESPEARE, "max_new_tokens": 30, "stream": True}  # admitted: it fits 1.5 s
    with httpx.stream("POST", tight_server.url(GEN), json=body, timeout=30) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        with stopped_worker(tight_server):  # started; then the worker stops and the deadline passes
            events = [line[len("data: ") :] for line in r.iter_lines() if line.startswith("data: ")]
    assert "[DONE]" not in events
    last = json.loads(events[-1])
    assert last["error"]["code"] == "timeout" and last["error"]["type"] == "timeout_error"
    wait_for_metric(tight_server, "charlm_requests_in_flight", lambda v: v == 0)
