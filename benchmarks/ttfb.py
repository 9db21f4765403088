"""Client TTFT against the server's sampling TTFT: `python -m benchmarks.ttfb [--c 8]`, and `make bench`'s
`ttfb` part (concurrency 1 and 8).

A low-overhead client (raw asyncio sockets, no HTTP library): each of `c` loops keeps one HTTP/1.1
keep-alive connection (as SDK clients do) and sends streamed /v1/generate requests on it, noting when
the first event carrying text arrives (client TTFT, from just before the request is written). The
server's own figures come from the same requests: the final event's `timing.first_token_ms` (sampling
TTFT: admission to the first generated character, in the worker) and, from /metrics, the mean of
charlm_time_to_first_byte_seconds over these requests (request received to that event written, in the
API server). Medians, and the
ratio of the medians client / sampling, which docs/benchmarks.md ("First byte") breaks down.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchmarks.common import MODELS_DIR, NAMES

TEXT = re.compile(rb'"text":"[^"]')
END = b"\r\n0\r\n\r\n"


@dataclass(frozen=True)
class TtfbSettings:
    concurrency: tuple[int, ...] = (1, 8)
    requests: int = 96  # per concurrency, split among the clients
    max_new_tokens: int = 16
    model: str = NAMES

    @classmethod
    def quick(cls) -> TtfbSettings:
        return cls(requests=16)


@dataclass(frozen=True)
class Sample:
    client_ttft_ms: float
    sampling_ttft_ms: float


class Connection:
    """One keep-alive connection; `one` reopens it when the server closed it."""

    def __init__(self, port: int):
        self.port = port
        self.streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self.streams is None:
            self.streams = await asyncio.open_connection("127.0.0.1", self.port)
        return self.streams

    def close(self) -> None:
        if self.streams is not None:
            self.streams[1].close()
            self.streams = None


async def one(conn: Connection, body: dict) -> Sample:
    payload = json.dumps(body).encode()
    head = (
        f"POST /v1/generate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\n\r\n"
    ).encode()
    reader, writer = await conn.open()
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    writer.write(head + payload)
    first, data = None, b""
    while not data.endswith(END):  # a chunked stream ends with a zero-size chunk
        chunk = await reader.read(65536)
        if not chunk:
            raise RuntimeError(f"the server closed the connection mid-answer: {data[:300]!r}")
        if first is None and TEXT.search(chunk):
            first = loop.time() - t0
        data += chunk
    if not data.startswith(b"HTTP/1.1 200") or b"\r\nconnection: close" in data.split(b"\r\n\r\n")[0].lower():
        conn.close()
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
        conn = Connection(port)
        try:
            return [await one(conn, {**body, "seed": i * 1000 + k}) for k in range(per_loop)]
        finally:
            conn.close()

    results = await asyncio.gather(*(loop(i) for i in range(concurrency)))
    return [s for r in results for s in r]


def first_byte(metrics_text: str, model: str) -> tuple[float, float]:
    """(sum in seconds, count) of charlm_time_to_first_byte_seconds for `model`."""

    def value(name: str) -> float:
        m = re.search(rf'^{name}{{model="{model}"}} ([0-9.e+-]+)$', metrics_text, re.M)
        return float(m.group(1)) if m else 0.0

    return value("charlm_time_to_first_byte_seconds_sum"), value("charlm_time_to_first_byte_seconds_count")


def measure(port: int, concurrency: int = 8, per_client: int = 12, model: str = NAMES, tokens: int = 16) -> dict:
    """One row: `concurrency` clients x `per_client` streamed requests, after a warm-up of 2 each."""
    import httpx

    body = {"model": model, "max_new_tokens": tokens, "stream": True}
    metrics_url = f"http://127.0.0.1:{port}/metrics"
    asyncio.run(run(port, concurrency, 2, body))
    s0, n0 = first_byte(httpx.get(metrics_url, timeout=10).text, model)
    samples = asyncio.run(run(port, concurrency, per_client, body))
    s1, n1 = first_byte(httpx.get(metrics_url, timeout=10).text, model)
    client = statistics.median(s.client_ttft_ms for s in samples)
    sampling = statistics.median(s.sampling_ttft_ms for s in samples)
    return {
        "model": model,
        "concurrency": concurrency,
        "requests": len(samples),
        "client_ttft_p50_ms": round(client, 2),
        "client_ttft_p99_ms": round(_p99([s.client_ttft_ms for s in samples]), 2),
        "sampling_ttft_p50_ms": round(sampling, 2),
        "ratio": round(client / sampling, 2) if sampling else None,
        "server_first_byte_mean_ms": round((s1 - s0) / (n1 - n0) * 1000, 2) if n1 > n0 else None,
    }


def _p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]


def run_ttfb(models: Path, settings: TtfbSettings) -> list[dict]:
    """`make bench`'s part: one server (the models folder's, defaults), a row per concurrency."""
    from tests.support.serving import running_server

    rows = []
    with running_server(models=models) as srv:
        for c in settings.concurrency:
            row = measure(srv.port, c, max(1, settings.requests // c), settings.model, settings.max_new_tokens)
            rows.append(row)
            print(
                f"ttfb c={c}: client p50 {row['client_ttft_p50_ms']:.1f} ms, sampling p50 "
                f"{row['sampling_ttft_p50_ms']:.1f} ms ({row['ratio']}x)",
                flush=True,
            )
    return rows


def compare(trees: list[Path], concurrency: int, rounds: int, per_client: int = 4) -> list[dict]:
    """Before/after in one run: a server from each source tree (its own code and models), all up at
    once, rounds of `concurrency` x `per_client` requests against each in turn; a row per tree."""
    import subprocess
    import sys

    from tests.support.serving import ServerProcess, free_port

    servers: list[ServerProcess] = []
    body = {"model": NAMES, "max_new_tokens": 16, "stream": True}
    try:
        for tree in trees:
            port = free_port()
            env = {k: v for k, v in os.environ.items() if not k.startswith("CHARLM_")}
            env["PYTHONPATH"] = str(tree)
            log = tempfile.NamedTemporaryFile(prefix="charlm-ttfb-", suffix=".log", delete=False)  # noqa: SIM115
            cmd = [sys.executable, "-m", "service", "serve", "--port", str(port), "--models", str(tree / "models")]
            proc = subprocess.Popen(cmd, cwd=tree, env=env, stdout=log, stderr=subprocess.STDOUT)
            servers.append(ServerProcess(proc, port, Path(log.name), time.monotonic(), _log=log))
            servers[-1].wait_ready(120)
        samples: list[list[Sample]] = [[] for _ in trees]
        for srv in servers:
            asyncio.run(run(srv.port, concurrency, 2, body))  # warm-up
        for _ in range(rounds):
            for i, srv in enumerate(servers):
                samples[i] += asyncio.run(run(srv.port, concurrency, per_client, body))
    finally:
        for srv in servers:
            srv.stop()
            srv.remove_log()
    rows = []
    for tree, got in zip(trees, samples, strict=True):
        client = statistics.median(s.client_ttft_ms for s in got)
        sampling = statistics.median(s.sampling_ttft_ms for s in got)
        rows.append(
            {
                "tree": str(tree),
                "concurrency": concurrency,
                "requests": len(got),
                "client_ttft_p50_ms": round(client, 2),
                "sampling_ttft_p50_ms": round(sampling, 2),
                "ratio": round(client / sampling, 2) if sampling else None,
            }
        )
    return rows


def settings_dict(settings: TtfbSettings) -> dict[str, Any]:
    return asdict(settings)


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.ttfb", description=__doc__.splitlines()[0])
    p.add_argument("--c", type=int, default=8, help="concurrent clients (default 8)")
    p.add_argument("--per-client", type=int, default=12, help="requests per client (default 12)")
    p.add_argument("--port", type=int, default=None, help="a running server's port (default: start one)")
    p.add_argument("--models", type=Path, default=MODELS_DIR, help="models folder of the server it starts")
    p.add_argument(
        "--trees",
        default=None,
        help="before/after: comma-separated source trees (e.g. /work/main,.), a server from each, alternating",
    )
    p.add_argument("--rounds", type=int, default=12, help="with --trees: rounds (default 12)")
    args = p.parse_args()
    if args.trees:
        trees = [Path(t).resolve() for t in args.trees.split(",") if t.strip()]
        for row in compare(trees, args.c, args.rounds):
            print(json.dumps(row))
        return 0
    if args.port:
        print(json.dumps(measure(args.port, args.c, args.per_client)))
        return 0
    from tests.support.serving import running_server

    with running_server(models=args.models) as srv:
        print(json.dumps(measure(srv.port, args.c, args.per_client)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
