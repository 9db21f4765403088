"""What the real-server HTTP tests share: the routes and shipped models by name, SSE framing and /metrics."""

from __future__ import annotations

import re
import time

import httpx

from tests.support.serving import Server

GEN = "/v1/generate"
CMPL = "/v1/completions"
NAMES = "names-gpt"
WAVENET = "names-wavenet"
SHAKESPEARE = "shakespeare-gpt"


def sse(response: httpx.Response) -> list[str]:
    """The data payloads of an SSE body, in order (asserting the framing on the way)."""
    body = response.text
    assert body.endswith("\n\n"), "every event ends with a blank line"
    events = []
    for block in body.strip("\n").split("\n\n"):
        lines = block.split("\n")
        assert all(line.startswith("data: ") for line in lines), block
        events.append("\n".join(line[len("data: ") :] for line in lines))
    return events


def metric(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels`."""
    total = 0.0
    for line in text.splitlines():
        m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)$", line)
        if not m or m.group(1) != name:
            continue
        got = dict(re.findall(r'(\w+)="([^"]*)"', m.group(3) or ""))
        if all(got.get(k) == v for k, v in labels.items()):
            total += float(m.group(4))
    return total


def wait_for_metric(server: Server, name: str, predicate, timeout: float = 5.0, **labels: str) -> float:  # type: ignore[no-untyped-def]
    """Poll /metrics until predicate(value of name{labels}) holds; the value."""
    deadline = time.monotonic() + timeout
    while True:
        value = metric(httpx.get(server.url("/metrics")).text, name, **labels)
        if predicate(value):
            return value
        assert time.monotonic() < deadline, f"{name}{labels} = {value}"
        time.sleep(0.1)
