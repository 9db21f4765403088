"""A worker crash answers everyone: `kill -9` of a real worker process under load.

Every request the dead worker held gets a JSON 503 `worker_crashed` (or an SSE error event) within 1 s,
/health and /ready turn 503 at once, the worker is replaced while the server keeps running, and with
--workers 2 the other worker serves throughout (service/watcher.py, service/held.py); a crash loop stops it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import threading
import time

import httpx

from service.lifecycle import ShutdownSignals
from tests.support.serving import ServerProcess, start_server

LONG = {"model": "shakespeare-gpt", "max_new_tokens": 2048, "n": 4}


def _request(srv: ServerProcess, body: dict, out: dict) -> None:
    """One request; out gets its outcome ('status', 'code' or the stream's last event) and when it ended."""
    try:
        if body.get("stream"):
            with httpx.stream("POST", srv.url("/v1/generate"), json=body, timeout=60) as r:
                out["status"] = r.status_code
                if r.status_code != 200:  # refused before it started: a JSON error body, no events
                    out["last"] = r.read().decode()
                for line in r.iter_lines():
                    if line.startswith("data: "):
                        out["first"] = out.get("first") or time.monotonic()
                        out["last"] = line[len("data: ") :]
        else:
            r = httpx.post(srv.url("/v1/generate"), json=body, timeout=60)
            out["status"], out["last"] = r.status_code, r.text
            out["json"] = r.headers.get("content-type", "").startswith("application/json")
    except httpx.HTTPError as exc:
        out["last"] = repr(exc)
    out["ended"] = time.monotonic()


def _start(srv: ServerProcess, body: dict) -> tuple[threading.Thread, dict]:
    out: dict = {}
    t = threading.Thread(target=_request, args=(srv, body, out), daemon=True)
    t.start()
    return t, out


def _code(last: str) -> str | None:
    try:
        return json.loads(last)["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return None


def _wait(predicate, timeout: float, what: str) -> float:  # type: ignore[no-untyped-def]
    t0 = time.monotonic()
    while not predicate():
        assert time.monotonic() - t0 < timeout, what
        time.sleep(0.02)
    return time.monotonic() - t0


def _ready(srv: ServerProcess) -> httpx.Response:
    return httpx.get(srv.url("/ready"), timeout=10)


def test_kill_9_of_the_worker_answers_its_requests_and_the_worker_is_replaced() -> None:
    srv = start_server("--timeout", "600")  # the long requests fit (admitted)
    try:
        (worker,) = srv.worker_pids()
        running = [_start(srv, {**LONG, "stream": True, "seed": i}) for i in range(2)]
        running.append(_start(srv, {**LONG, "seed": 9}))
        _wait(lambda: all(out.get("first") for _, out in running[:2]), 30, "streams did not start")
        _wait(lambda: _ready(srv).json()["workers"]["worker_0"]["sequences"] >= 12, 30, "not all running")
        t_kill = time.monotonic()
        os.kill(worker, signal.SIGKILL)
        _wait(lambda: httpx.get(srv.url("/health"), timeout=10).status_code == 503, 1.0, "/health stayed 200")
        t_health = time.monotonic()
        health = httpx.get(srv.url("/health"), timeout=10)
        assert health.status_code == 503 and health.json()["error"]["code"] == "unhealthy", health.text
        assert _ready(srv).status_code == 503
        for thread, _ in running:
            thread.join(10)
        answered = [round(out["ended"] - t_kill, 3) for _, out in running]
        print("answered after the kill (s):", answered, "/health 503 after", round(t_health - t_kill, 3))
        for _, out in running[:2]:  # streams: an SSE error event, not a silent end
            assert out["status"] == 200 and _code(out["last"]) == "worker_crashed", out
        plain = running[2][1]
        assert plain["status"] == 503 and plain["json"] and _code(plain["last"]) == "worker_crashed", plain
        assert max(answered) <= 1.0, answered
        restarted = _wait(lambda: _ready(srv).status_code == 200, 60, "the worker was not replaced")
        print("ready again after (s):", round(time.monotonic() - t_kill, 2), restarted)
        assert srv.proc.poll() is None, "the server exited instead of replacing its worker"
        assert srv.worker_pids() and worker not in srv.worker_pids()
        after = httpx.post(srv.url("/v1/generate"), json={"model": "names-gpt"}, timeout=30)
        assert after.status_code == 200 and httpx.get(srv.url("/health"), timeout=10).status_code == 200
        assert "Traceback" not in srv.log(), srv.log()[-3000:]
    finally:
        srv.stop(signal.SIGKILL)
    srv.remove_log()


def test_a_request_the_worker_was_taking_as_it_died_is_answered() -> None:
    """An idle worker waits in a `get` that LitServe's manager serves for up to a second: stopped there,
    it is handed the next request, which then dies with it, in no worker's row (service/client.py).
    Stopped just as that second ran out, the request stays queued and the replacement answers it (200):
    then it is tried again (three tries stay under the crash-loop limit)."""
    srv = start_server("--timeout", "600")
    try:
        outcomes = []
        for _ in range(3):
            _wait(lambda: _ready(srv).status_code == 200, 60, "the worker was not ready")
            (worker,) = srv.worker_pids()
            os.kill(worker, signal.SIGSTOP)
            thread, out = _start(srv, {"model": "names-gpt", "max_new_tokens": 4})
            time.sleep(0.5)  # the manager hands it over at once; the stopped worker never reads it
            os.kill(worker, signal.SIGKILL)
            t_kill = time.monotonic()
            thread.join(30)
            outcomes.append((out.get("status"), _code(out.get("last", "")), round(out["ended"] - t_kill, 3)))
            if out["status"] != 200:
                break
        print("status, code, answered after the kill (s):", outcomes)
        status, code, after_s = outcomes[-1]
        assert status == 503 and code == "worker_crashed" and after_s < 5.0, outcomes
        assert all(o[0] == 200 for o in outcomes[:-1]), outcomes
        _wait(lambda: _ready(srv).status_code == 200, 60, "the worker was not replaced")
        after = httpx.post(srv.url("/v1/generate"), json={"model": "names-gpt"}, timeout=30)
        assert after.status_code == 200, after.text
    finally:
        srv.stop(signal.SIGKILL)
    srv.remove_log()


def test_with_two_workers_the_other_serves_throughout() -> None:
    srv = start_server("--workers", "2", "--timeout", "600")
    try:
        pids = srv.worker_pids()
        assert len(pids) == 2
        long = [_start(srv, {**LONG, "stream": True, "seed": i}) for i in range(4)]

        def both_busy() -> bool:
            workers = _ready(srv).json()["workers"]
            return all(w["sequences"] > 0 for w in workers.values())

        _wait(both_busy, 30, "both workers never got work")
        os.kill(pids[0], signal.SIGKILL)  # busy: it blocks on nothing, so it takes no request with it
        t_kill = time.monotonic()
        shorts = []
        while time.monotonic() - t_kill < 4.0:
            r = httpx.post(srv.url("/v1/generate"), json={"model": "names-gpt", "max_new_tokens": 4}, timeout=30)
            shorts.append(r.status_code)
        for thread, _ in long:
            thread.join(30)
        assert all("ended" in out for _, out in long), long  # every one answered, none left hanging
        codes = [_code(out["last"]) for _, out in long]
        print("short requests while a worker was replaced:", shorts, "long ones ended:", codes)
        assert shorts and all(s == 200 for s in shorts), shorts
        assert "worker_crashed" in codes  # those on the dead worker were answered
        _wait(lambda: _ready(srv).status_code == 200, 60, "the worker was not replaced")
        assert srv.proc.poll() is None
    finally:
        srv.stop(signal.SIGKILL)
    srv.remove_log()


def test_a_crash_loop_stops_the_server() -> None:
    """LitServe's monitor starts each replacement (restart_workers); the main process counts the deaths,
    and the sixth within a minute stops the server (exit 1) instead of flapping for ever."""
    srv = start_server()
    try:
        killed: list[int] = []
        t0 = time.monotonic()
        while srv.proc.poll() is None and time.monotonic() - t0 < 90:
            pids = srv.worker_pids()  # a dead one is left out at once; /ready says so within a watch
            with contextlib.suppress(httpx.HTTPError):  # the server stops
                if pids and pids[0] not in killed and _ready(srv).status_code == 200:
                    killed.append(pids[0])
                    os.kill(pids[0], signal.SIGKILL)
                    # until the watcher has seen it (/ready 503), /ready still says 200, while LitServe may
                    # already have spawned the replacement: killed before it posts its pid, that one is no
                    # worker the server counts, so the next kill waits for the server to see this one
                    t_kill = time.monotonic()
                    while srv.proc.poll() is None and time.monotonic() - t_kill < 10:
                        if _ready(srv).status_code != 200:
                            break
                        time.sleep(0.02)
            time.sleep(0.05)
        print("workers killed:", len(killed), "in", round(time.monotonic() - t0, 1), "s")
        assert srv.proc.wait(30) == 1, srv.log()[-3000:]
        assert len(killed) == 6 and "workers died 6 times within 60 s: shutting down" in srv.log(), srv.log()[-3000:]
        assert "Traceback" not in srv.log(), srv.log()[-3000:]
    finally:
        srv.stop(signal.SIGKILL)
    srv.remove_log()


def test_litserves_monitor_notes_are_dropped_only_while_the_server_stops() -> None:
    """LitServe's monitor can tick between its own shutdown's termination of the workers and the end of
    its manager: it would then restart them, or fail on the closed manager with a traceback."""
    signals = ShutdownSignals(shared=None, drain_timeout=1.0, serving=lambda: True)

    def passes(message: str) -> bool:
        return signals._monitor_news(logging.LogRecord("litserve.server", logging.ERROR, "", 0, message, None, None))

    notes = ("Monitoring worker crashed", "[monitoring] Worker 0 is dead. Restarting it")
    assert all(passes(n) for n in notes)  # a worker that dies while serving is news
    signals.state = "stopping"
    assert not any(passes(n) for n in notes) and passes("Shutting down LitServe...")
