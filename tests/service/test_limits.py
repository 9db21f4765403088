"""Limits against slow and large clients on the real server (service/limits.py), with raw sockets: what a
misbehaving client sends cannot be said with an HTTP library."""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import re
import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from service.limits import HEADER_TIMEOUT_S, MAX_HEADER_BYTES, MAX_HEADERS
from service.settings import MAX_BODY_BYTES
from tests.support.serving import ServerProcess, running_server

KEEP_ALIVE_S = 1.0


@pytest.fixture(scope="module")
def srv() -> Iterator[ServerProcess]:
    with running_server("--keep-alive-timeout", str(KEEP_ALIVE_S)) as server:
        yield server


def connect(srv: ServerProcess) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", srv.port), timeout=HEADER_TIMEOUT_S + 10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def exchange(srv: ServerProcess, head: bytes) -> bytes:
    """Send a request head (as far as the server lets us) and read until it closes the connection."""
    with connect(srv) as sock:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(head)  # it may answer and close before we finish: then read what it said
        return read_all(sock)


def read_all(sock: socket.socket) -> bytes:
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    return data


def read_response(sock: socket.socket) -> bytes:
    """One whole response (head and Content-Length body) on a connection that stays open."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(v) for k, _, v in (ln.partition(b":") for ln in head.split(b"\r\n")) if k.lower() == b"content-length"
    )
    while len(body) < length:
        body += sock.recv(65536)
    return data


def status_of(reply: bytes) -> int | None:
    return int(reply.split(b" ", 2)[1]) if reply.startswith(b"HTTP/1.1 ") else None


def request_head(*headers: str, path: str = "/health") -> bytes:
    lines = [f"GET {path} HTTP/1.1", "Host: 127.0.0.1", "Connection: close", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def assert_too_large(reply: bytes, fragment: str) -> None:
    assert status_of(reply) == 431, reply[:300]
    assert re.search(rb"\r\nx-request-id: req_[0-9a-f]{32}\r\n", reply.split(b"\r\n\r\n")[0] + b"\r\n"), reply[:300]
    body = json.loads(reply.split(b"\r\n\r\n", 1)[1])
    assert body["error"]["code"] == "request_header_fields_too_large"
    assert fragment in body["error"]["message"]


def test_ordinary_requests_pass(srv: ServerProcess) -> None:
    big_but_fine = request_head(f"X-Big: {'a' * (MAX_HEADER_BYTES // 2)}", *(f"X-H{i}: v" for i in range(90)))
    assert status_of(exchange(srv, big_but_fine)) == 200


def test_a_1mb_header_gets_431(srv: ServerProcess) -> None:
    assert_too_large(exchange(srv, request_head("X-Big: " + "a" * 1_000_000)), f"larger than {MAX_HEADER_BYTES}")


def test_10000_headers_get_431(srv: ServerProcess) -> None:
    assert_too_large(exchange(srv, request_head(*(f"X-H{i}: v" for i in range(10_000)))), "larger than")


def test_more_than_max_headers_get_431(srv: ServerProcess) -> None:
    reply = exchange(srv, request_head(*(f"X-H{i}: v" for i in range(MAX_HEADERS + 1))))
    assert_too_large(reply, f"more than {MAX_HEADERS} request headers")


def test_the_body_limit_still_answers_413(srv: ServerProcess) -> None:
    body = {"model": "names-gpt", "prompt": "a" * (MAX_BODY_BYTES + 10)}
    reply = httpx.post(srv.url("/v1/generate"), json=body, timeout=30)
    assert reply.status_code == 413
    assert reply.json()["error"]["code"] == "request_too_large"


def _silent(srv: ServerProcess) -> float:
    """Connects and sends nothing: seconds until the server closes the connection."""
    with connect(srv) as sock:
        t0 = time.monotonic()
        assert read_all(sock) == b""
        return time.monotonic() - t0


def _trickle(srv: ServerProcess, after_a_request: bool = False) -> tuple[float, bytes]:
    """Sends a header line a byte per 0.5 s, never ending it (on a fresh or a kept-alive connection):
    seconds from its first byte until the server closes the connection, and what it answered."""
    with connect(srv) as sock:
        answered = b""
        if after_a_request:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            answered = read_response(sock)  # 200, and the connection is kept alive
        t0 = time.monotonic()
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        sock.settimeout(0.5)
        while time.monotonic() - t0 < HEADER_TIMEOUT_S + 10:
            try:
                sock.sendall(b"a")
                if sock.recv(65536) == b"":
                    break
            except TimeoutError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                break
        return time.monotonic() - t0, answered


def _idle_after_request(srv: ServerProcess) -> float:
    """A kept-alive connection left idle: seconds until the server closes it (the keep-alive timeout)."""
    with connect(srv) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert read_response(sock).startswith(b"HTTP/1.1 200")
        t0 = time.monotonic()
        assert read_all(sock) == b""
        return time.monotonic() - t0


def test_slow_and_idle_clients_are_dropped_within_the_timeouts(srv: ServerProcess) -> None:
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        silent = pool.submit(_silent, srv)
        trickle = pool.submit(_trickle, srv)
        trickle_kept_alive = pool.submit(_trickle, srv, True)
        idle = pool.submit(_idle_after_request, srv)
        # Meanwhile the server answers everyone else.
        assert httpx.get(srv.url("/health"), timeout=5).status_code == 200
        measured = {
            "silent": silent.result(),
            "trickle": trickle.result()[0],
            "trickle after a request": trickle_kept_alive.result()[0],
            "idle keep-alive": idle.result(),
        }
    print("dropped after (s):", {k: round(v, 2) for k, v in measured.items()})
    assert trickle_kept_alive.result()[1].startswith(b"HTTP/1.1 200")
    for name in ("silent", "trickle", "trickle after a request"):
        assert HEADER_TIMEOUT_S - 1 <= measured[name] <= HEADER_TIMEOUT_S + 2, (name, measured)
    assert KEEP_ALIVE_S - 0.5 <= measured["idle keep-alive"] <= KEEP_ALIVE_S + 2, measured
    assert httpx.get(srv.url("/ready"), timeout=5).status_code == 200
