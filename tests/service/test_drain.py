"""The drain to the last byte, and partial bodies, on the real server.

- Requests sent 0-5 s after SIGTERM, each on a new connection, while a long stream keeps the drain
  open: every one gets an answer (503 + Retry-After) until the listener closes, and is refused after
  (connection refused); none is reset (service/listener.py, service/draining.py).
- A body that stops arriving gets 408 within the body timeout, and the connection is closed
  (service/limits.py).
"""

from __future__ import annotations

import collections
import json
import signal
import socket
import threading
import time

import httpx

from service.limits import BODY_TIMEOUT_S
from tests.support.serving import start_server


def _raw_partial_body(port: int, path: str = "/v1/generate") -> tuple[float, bytes]:
    """POST with Content-Length 1000 and 10 bytes of body: (seconds until the server closes, its answer)."""
    with socket.create_connection(("127.0.0.1", port), timeout=BODY_TIMEOUT_S + 20) as sock:
        head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
        sock.sendall(head.encode() + b'{"model":"')
        t0 = time.monotonic()
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
        return time.monotonic() - t0, data


def test_a_partial_body_gets_408_and_the_connection_is_closed() -> None:
    server = start_server()
    try:
        took, reply = _raw_partial_body(server.port)
        assert reply.startswith(b"HTTP/1.1 408 "), reply[:200]
        body = json.loads(reply.split(b"\r\n\r\n", 1)[1])
        assert body["error"]["code"] == "request_timeout", body
        assert BODY_TIMEOUT_S - 1 <= took <= BODY_TIMEOUT_S + 3, took
        # a setting: shorter here, and the server is still fine afterwards
        assert httpx.get(server.url("/health"), timeout=10).status_code == 200
        assert "Traceback" not in server.log(), server.log()[-3000:]
    finally:
        server.stop(signal.SIGKILL)
    server = start_server("--body-timeout", "1.5")
    try:
        took, reply = _raw_partial_body(server.port)
        assert reply.startswith(b"HTTP/1.1 408 ") and 1.0 <= took <= 4.0, (took, reply[:200])
    finally:
        server.stop(signal.SIGKILL)
    server.remove_log()


def _classify(exc: BaseException) -> str:
    if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
        return "refused"  # the listener is closed: the client knows nothing was sent
    return f"reset: {type(exc).__name__}"


def _pound(url: str, until: float, outcomes: collections.Counter, headers_seen: list[dict]) -> None:
    """New connection per request, POST then GET alternately, until `until`."""
    i = 0
    while time.monotonic() < until:
        i += 1
        try:
            with httpx.Client(timeout=httpx.Timeout(10.0, connect=10.0)) as client:
                if i % 2:
                    r = client.post(url + "/v1/generate", json={"model": "names-gpt", "max_new_tokens": 4})
                else:
                    r = client.get(url + "/v1/models")
            outcomes[str(r.status_code)] += 1
            if r.status_code == 503:
                headers_seen.append({**dict(r.headers), "code": r.json()["error"]["code"]})
        except httpx.HTTPError as exc:
            outcomes[_classify(exc)] += 1
            if outcomes[_classify(exc)] == 1:
                print("first", _classify(exc), repr(exc))
        time.sleep(0.01)


def test_requests_sent_during_the_drain_get_503_and_none_is_reset() -> None:
    server = start_server("--drain-timeout", "2", "--timeout", "600")  # the long stream is admitted
    try:
        events: list[str] = []

        def stream() -> None:
            long = {"model": "shakespeare-gpt", "max_new_tokens": 2048, "stream": True, "n": 4}
            try:
                with httpx.stream("POST", server.url("/v1/generate"), json=long, timeout=60) as r:
                    events.extend(r.iter_lines())
            except httpx.HTTPError as exc:
                events.append(repr(exc))

        threading.Thread(target=stream, daemon=True).start()
        deadline = time.monotonic() + 20
        while len(events) < 3:  # streaming: the drain will last its whole window
            assert time.monotonic() < deadline
            time.sleep(0.05)
        server.proc.send_signal(signal.SIGTERM)
        until = time.monotonic() + 5.0
        outcomes: collections.Counter = collections.Counter()
        refusals: list[dict] = []
        pounders = [
            threading.Thread(target=_pound, args=(server.base_url, until, outcomes, refusals)) for _ in range(4)
        ]
        for t in pounders:
            t.start()
        for t in pounders:
            t.join(30)
        server.proc.wait(30)
        print("outcomes 0-5 s after SIGTERM:", dict(outcomes))
        resets = {k: v for k, v in outcomes.items() if k.startswith("reset")}
        assert not resets, dict(outcomes)
        assert outcomes["503"] >= 3, dict(outcomes)  # answered while the listener was open
        assert all(h.get("retry-after") and h["code"] == "shutting_down" for h in refusals), refusals[:3]
        assert all(h.get("connection") == "close" for h in refusals), refusals[:3]
        assert any("shutting_down" in e for e in events), events[-3:]  # the long stream was cut properly
    finally:
        server.stop(signal.SIGKILL)
    server.remove_log()
