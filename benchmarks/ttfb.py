"""Client TTFT against the server's sampling TTFT, at concurrency c: `python -m benchmarks.ttfb [--c 8]`.

A low-overhead client (raw asyncio sockets, one HTTP/1.1 request per connection, no HTTP library):
each of `c` loops sends streamed /v1/generate requests and notes when the first event carrying text
arrives (client TTFT, from just before the request is written). The server's own figures come from the
same requests: the final event's `timing.first_token_ms` (sampling TTFT: admission to the first
generated character, in the worker) and, from /metrics, the mean of charlm_time_to_first_byte_seconds
(request received to that event written, in the API server). Medians and the ratio client / sampling.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

TEXT = re.compile(rb'"text":"[^"]')


@dataclass(frozen=True)
class Sample:
    client_ttft_ms: float
    sampling_ttft_ms: float


async def one(port: int, body: dict) -> Sample:
    payload = json.dumps(body).encode()
    head = (
        f"POST /v1/generate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n"
    ).encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    t0 = time.perf_counter()
    writer.write(head + payload)
    first, data = None, b""
    while chunk := await reader.read(65536):
        if first is None and TEXT.search(chunk):
            first = time.perf_counter() - t0
        data += chunk
    writer.close()
    timing = [
        json.loads(line[6:])["timing"]
        for line in data.split(b"\n")
        if line.startswith(b'data: {"') and b'"timing"' in line
    ]
    if first is None or not timing:
        raise RuntimeError(f"no text or no timing in the answer: {data[:300]!r}")
    return Sample(first * 1000, timing[-1]["first_token_ms"])


async def run(port: int, concurrency: int, per_loop: int, body: dict) -> list[Sample]:
    async def loop(i: int) -> list[Sample]:
        return [await one(port, {**body, "seed": i * 1000 + k}) for k in range(per_loop)]

    results = await asyncio.gather(*(loop(i) for i in range(concurrency)))
    return [s for r in results for s in r]


def first_byte_mean_ms(metrics_text: str, model: str) -> float | None:
    def value(name: str) -> float:
        m = re.search(rf'^{name}{{model="{model}"}} ([0-9.e+-]+)$', metrics_text, re.M)
        return float(m.group(1)) if m else 0.0

    count = value("charlm_time_to_first_byte_seconds_count")
    return value("charlm_time_to_first_byte_seconds_sum") / count * 1000 if count else None


def measure(port: int, concurrency: int = 8, per_loop: int = 12, model: str = "names-gpt") -> dict:
    import httpx

    body = {"model": model, "max_new_tokens": 16, "stream": True}
    asyncio.run(run(port, concurrency, 2, body))  # warm-up
    before = first_byte_mean_ms(httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text, model)
    samples = asyncio.run(run(port, concurrency, per_loop, body))
    client = statistics.median(s.client_ttft_ms for s in samples)
    sampling = statistics.median(s.sampling_ttft_ms for s in samples)
    return {
        "concurrency": concurrency,
        "requests": len(samples),
        "client_ttft_p50_ms": round(client, 2),
        "sampling_ttft_p50_ms": round(sampling, 2),
        "ratio": round(client / sampling, 2) if sampling else None,
        "server_first_byte_mean_ms": round(
            first_byte_mean_ms(httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text, model) or 0, 2
        ),
        "first_byte_mean_before_ms": before,
    }


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.ttfb", description=__doc__.splitlines()[0])
    p.add_argument("--c", type=int, default=8, help="concurrent clients (default 8)")
    p.add_argument("--per-client", type=int, default=12, help="requests per client (default 12)")
    p.add_argument("--port", type=int, default=None, help="a running server's port (default: start one)")
    args = p.parse_args()
    if args.port:
        print(json.dumps(measure(args.port, args.c, args.per_client)))
        return 0
    from tests.support.serving import running_server

    with running_server() as srv:
        print(json.dumps(measure(srv.port, args.c, args.per_client)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
