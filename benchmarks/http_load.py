"""Load and probes for the HTTP benchmark: wrk runs, streamed time-to-first-token probes, a sample check.

Throughput and latency come from `wrk` (one wrk thread: the machine's cores are for the server) with a
Lua script that posts the scenario's body and, per response, counts non-200s and sums
usage.completion_tokens and the finish_reason "stop"s; generated characters = completion_tokens - stops.
It also reports the mean latency, for the closed-loop throughput of http_bench's rows (Little's law).
Time to first token comes from an httpx client streaming the same request (first SSE event with text).
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks.common import BenchError
from benchmarks.http_settings import HttpSettings, Scenario

LUA = r"""
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = [==[@BODY@]==]

local threads = {}
ok, non200, tokens, stops, first_status = 0, 0, 0, 0, 0

function setup(thread)
  table.insert(threads, thread)
end

function response(status, headers, body)
  if status ~= 200 then
    non200 = non200 + 1
    if first_status == 0 then first_status = status end
    return
  end
  ok = ok + 1
  for n in string.gmatch(body, '"completion_tokens"%s*:%s*(%d+)') do
    tokens = tokens + tonumber(n)
  end
  for _ in string.gmatch(body, '"finish_reason"%s*:%s*"stop"') do
    stops = stops + 1
  end
end

function done(summary, latency, requests)
  local t = {ok = 0, non200 = 0, tokens = 0, stops = 0}
  local first = 0
  for _, thread in ipairs(threads) do
    for k, _ in pairs(t) do
      t[k] = t[k] + (thread:get(k) or 0)
    end
    if first == 0 then first = thread:get("first_status") or 0 end
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"ok":%d,"non200":%d,"first_error_status":%d,"tokens":%d,' ..
    '"stops":%d,"connect":%d,"read":%d,"write":%d,"timeout":%d,"p50_us":%d,"p95_us":%d,"p99_us":%d,' ..
    '"max_us":%d,"mean_us":%d}\n',
    summary.requests, summary.duration, t.ok, t.non200, first, t.tokens, t.stops,
    e.connect, e.read, e.write, e.timeout,
    latency:percentile(50.0), latency:percentile(95.0), latency:percentile(99.0), latency.max, latency.mean))
end
"""


def run_wrk(url: str, body: dict[str, Any], concurrency: int, settings: HttpSettings, workdir: Path) -> dict:
    """One wrk run; its counters (see LUA), or BenchError with wrk's own words."""
    text = json.dumps(body, separators=(",", ":"))
    if "]==]" in text:
        raise BenchError("request body contains the Lua long-string terminator")
    script = workdir / "bench.lua"
    script.write_text(LUA.replace("@BODY@", text))
    cmd = [
        "wrk",
        f"-t{max(1, min(settings.wrk_threads, concurrency))}",
        f"-c{concurrency}",
        f"-d{settings.duration_s}s",
        "--timeout",
        f"{settings.wrk_timeout_s}s",
        "-s",
        str(script),
        url,
    ]
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=settings.duration_s + settings.wrk_timeout_s + 60, check=False
    )
    for line in proc.stdout.splitlines():
        if line.startswith("BENCH_JSON "):
            return json.loads(line.removeprefix("BENCH_JSON "))
    raise BenchError(f"wrk gave no result (exit {proc.returncode}): {(proc.stderr or proc.stdout).strip()[-300:]}")


def sample_chars(url: str, scenario: Scenario) -> dict[str, Any]:
    """One plain request: the generated text's length against the Lua formula (tokens - stops)."""
    import httpx

    r = httpx.post(url + scenario.route, json=scenario.body, timeout=120.0)
    if r.status_code != 200:
        raise BenchError(f"{scenario.name}: sample request got {r.status_code}: {r.text[:200]}")
    data = r.json()
    chars = sum(len(c["text"]) - len(scenario.echo) for c in data["choices"])
    stops = sum(1 for c in data["choices"] if c.get("finish_reason") == "stop")
    formula = int(data["usage"]["completion_tokens"]) - stops
    return {"text_chars": chars, "formula_chars": formula, "ok": chars == formula}


def stream_ttft(client: Any, scenario: Scenario, seed: int) -> float | None:
    """Seconds from sending a streamed request to its first event with generated text (or a finish)."""
    body = {**scenario.body, "stream": True, "seed": seed}
    t0 = time.perf_counter()
    first: float | None = None
    got = 0
    with client.stream("POST", scenario.route, json=body) as r:
        if r.status_code != 200:
            r.read()
            return None
        for line in r.iter_lines():
            if not line.startswith("data: "):
                continue
            data = line[6:]
            if data == "[DONE]":
                break
            event = json.loads(data)
            if "error" in event:
                return None
            for choice in event.get("choices", ()):
                got += len(choice.get("text") or "")
                if first is None and (got > len(scenario.echo) or choice.get("finish_reason")):
                    first = time.perf_counter() - t0
    return first


class Prober(threading.Thread):
    """Streams requests one after another (at most one per `interval` s) until stopped; keeps TTFTs."""

    def __init__(self, url: str, scenario: Scenario, count: int | None, interval: float = 0.0):
        super().__init__(daemon=True)
        self.url, self.scenario, self.count, self.interval = url, scenario, count, interval
        self.halt = threading.Event()
        self.ttfts: list[float] = []
        self.errors = 0

    def run(self) -> None:
        import httpx

        with httpx.Client(base_url=self.url, timeout=120.0) as client:
            i = 0
            while not self.halt.is_set() and (self.count is None or i < self.count):
                t0 = time.perf_counter()
                try:
                    ttft = stream_ttft(client, self.scenario, seed=i)
                except httpx.HTTPError:
                    ttft = None
                if ttft is None:
                    self.errors += 1
                else:
                    self.ttfts.append(ttft)
                i += 1
                rest = self.interval - (time.perf_counter() - t0)
                if rest > 0:
                    self.halt.wait(rest)


def drain(url: str, scenario: Scenario) -> None:
    """Wait until the server has worked off what wrk left queued: one request, behind all of them."""
    import httpx

    with contextlib.suppress(httpx.HTTPError):
        httpx.post(url + scenario.route, json=scenario.body, timeout=300.0)


def head_of_line(url: str, route: str, long_body: dict, probe_body: dict, duration_s: float) -> dict[str, Any]:
    """Probe latencies (send -> whole reply, one after another) while two long requests run. One function
    on purpose: the long requests' threads, the probe loop and the cut share their state in order.

    The long ones stream, sent 0.3 s apart, and are cut (their connections closed) once the probing is over;
    `long_status` and `long_first_s` say whether they were really running.
    """
    import httpx

    halt = threading.Event()
    status: list[int] = []
    first: list[float] = []
    t0 = time.perf_counter()

    def long_request() -> None:
        body = {**long_body, "stream": True}
        with (
            contextlib.suppress(httpx.HTTPError),
            httpx.Client(timeout=300.0) as client,
            client.stream("POST", url + route, json=body) as r,
        ):
            status.append(r.status_code)
            seen = False
            for line in r.iter_lines():
                if line.startswith("data: ") and not seen:
                    seen = True
                    first.append(time.perf_counter() - t0)
                if halt.is_set():
                    return

    threads = [threading.Thread(target=long_request, daemon=True) for _ in range(2)]
    for i, thread in enumerate(threads):
        thread.start()
        if i == 0:
            time.sleep(0.3)
    deadline = time.perf_counter() + 30.0
    while len(first) < 2 and len(status) < 2 and time.perf_counter() < deadline:
        time.sleep(0.01)
    latencies, errors, first_error = [], 0, ""
    end = time.perf_counter() + duration_s
    with httpx.Client(base_url=url, timeout=120.0) as client:
        while time.perf_counter() < end and any(t.is_alive() for t in threads):
            t = time.perf_counter()
            try:
                r = client.post(route, json=probe_body)
                error = "" if r.status_code == 200 else f"{r.status_code} {r.text[:160]}"
            except httpx.HTTPError as exc:
                error = f"{type(exc).__name__}: {exc}"
            latency = time.perf_counter() - t
            if not error:
                latencies.append(latency)
            else:
                errors += 1
                first_error = first_error or error
            time.sleep(max(0.0, 0.05 - latency))  # at most 20 probes/s: the probes are not the load
    halt.set()
    for thread in threads:
        thread.join(10.0)
    return {
        "latencies_s": latencies,
        "errors": errors,
        "first_error": first_error,
        "long_status": status,
        "long_first_s": first,
    }
