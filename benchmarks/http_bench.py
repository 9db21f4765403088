"""HTTP benchmark: charlm's server and two LitServe reference servers, measured side by side.

Servers (each started in a subprocess on a free loopback port, waited for, stopped with SIGINT):
- charlm:   `python -m service serve` (ONNX Runtime; workers / max_batch_size / batch_timeout as set here);
- noop:     `python -m benchmarks.baseline noop`: charlm's request schema and the same server settings,
            predict returns a fixed name (LitServe's own ceiling on this machine);
- baseline: `python -m benchmarks.baseline baseline`: nanoGPT's sampler on the eager net, one request at
            a time, with the torch threads a charlm worker gets (cores // 2; `--baseline-threads`).

Throughput and latency come from `wrk` (one wrk thread: the machine's cores are for the server) with a
Lua script that posts the scenario's body and, per response, counts non-200s and sums
usage.completion_tokens and the finish_reason "stop"s; generated characters = completion_tokens - stops
(a `lines` model's end-of-name token is counted as a token but is not text; no stop strings are used).
The first response of every scenario is parsed in Python to check that formula against the text.
requests_per_s and chars_per_s count 200 responses only; errors = non-200 + socket errors + timeouts;
p50/p95/p99 come from wrk's latency histogram (request written -> response read).

Time to first token comes from a Python (httpx) client streaming the same request (stream: true) and
timing the first SSE event that carries generated text (or a finish): at concurrency 1 alone on an idle
server (the single-request figure), at higher concurrency while wrk runs (one extra connection, at most
4 requests/s). Reference servers do not stream: their ttft_ms is null.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchmarks.common import NAMES, REPO, SHAKESPEARE, BenchError, model_entry

NATIVE, OPENAI = "/v1/generate", "/v1/completions"
SHAKESPEARE_PROMPT = "\n"  # nanoGPT's default start; the same prompt as the engine benchmark


@dataclass(frozen=True)
class HttpSettings:
    duration_s: int = 10
    names_concurrency: tuple[int, ...] = (1, 16, 64)
    shakespeare_concurrency: tuple[int, ...] = (1, 8, 32)
    new_tokens: int = 256
    workers: int = 1
    max_batch_size: int = 32
    batch_timeout_ms: float = 5.0
    ttft_requests: int = 20
    baseline_threads: int = 1
    wrk_threads: int = 1
    wrk_timeout_s: int = 60
    ready_timeout_s: float = 180.0
    scenarios: tuple[str, ...] = ()  # empty: all

    @classmethod
    def quick(cls, baseline_threads: int) -> HttpSettings:
        return cls(duration_s=3, ttft_requests=5, baseline_threads=baseline_threads)


@dataclass(frozen=True)
class Scenario:
    name: str
    server: str  # charlm | noop | baseline
    route: str
    body: dict[str, Any]
    kind: str  # names | shakespeare: which concurrency levels, which reference, which ratio
    reference: str | None
    echo: str = ""  # text the route puts before the generated characters (native route: the prompt)

    def concurrency(self, settings: HttpSettings) -> tuple[int, ...]:
        return settings.names_concurrency if self.kind == "names" else settings.shakespeare_concurrency


def scenarios(settings: HttpSettings) -> list[Scenario]:
    names = {"model": NAMES, "prompt": "", "n": 1}
    shake_native = {"model": SHAKESPEARE, "prompt": SHAKESPEARE_PROMPT, "max_new_tokens": settings.new_tokens}
    shake_openai = {"model": SHAKESPEARE, "prompt": SHAKESPEARE_PROMPT, "max_tokens": settings.new_tokens}
    every = [
        Scenario("names", "charlm", NATIVE, names, "names", "noop"),
        Scenario("names-openai", "charlm", OPENAI, names, "names", "noop"),
        Scenario("shakespeare", "charlm", NATIVE, shake_native, "shakespeare", "shakespeare-baseline", "\n"),
        Scenario("shakespeare-openai", "charlm", OPENAI, shake_openai, "shakespeare", "shakespeare-baseline"),
        Scenario("noop", "noop", NATIVE, names, "names", None),
        Scenario("shakespeare-baseline", "baseline", NATIVE, shake_native, "shakespeare", None, "\n"),
    ]
    if settings.scenarios:
        unknown = set(settings.scenarios) - {s.name for s in every}
        if unknown:
            raise BenchError(f"unknown HTTP scenario(s): {', '.join(sorted(unknown))}")
        return [s for s in every if s.name in settings.scenarios]
    return every


# ----- servers -----


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    """One server subprocess in its own process group (so that nothing it spawns can outlive it)."""

    name: str
    cmd: list[str]
    ready_path: str
    log_path: Path
    port: int
    proc: subprocess.Popen | None = None
    startup_s: float = 0.0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float) -> None:
        import httpx

        env = {k: v for k, v in os.environ.items() if not k.startswith("CHARLM_") or k == "CHARLM_DATA_DIR"}
        env["PYTHONUNBUFFERED"] = "1"
        t0 = time.perf_counter()
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                self.cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = t0 + timeout_s
        with httpx.Client(base_url=self.url, timeout=5.0) as client:
            while True:
                if self.proc.poll() is not None:
                    raise BenchError(f"{self.name} server exited with {self.proc.returncode}: {self.log_tail()}")
                with contextlib.suppress(httpx.HTTPError):
                    if client.get(self.ready_path).status_code == 200:
                        break
                if time.perf_counter() > deadline:
                    self.stop()
                    raise BenchError(f"{self.name} server not ready after {timeout_s:.0f} s: {self.log_tail()}")
                time.sleep(0.25)
        self.startup_s = time.perf_counter() - t0

    def log_tail(self, lines: int = 5) -> str:
        try:
            text = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return "(no log)"
        return " | ".join(text[-lines:]) or "(empty log)"

    def stop(self) -> None:
        """SIGINT (the servers' clean shutdown), then SIGTERM, then SIGKILL to the group we created."""
        proc = self.proc
        if proc is None:
            return
        pgid = proc.pid  # start_new_session: the group id is the leader's pid
        for sig, wait_s in ((signal.SIGINT, 20.0), (signal.SIGTERM, 10.0)):
            if proc.poll() is not None:
                break
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(wait_s)
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
            proc.wait(10)
        # Anything left in the group (a worker the server failed to reap) goes too.
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                os.killpg(pgid, 0)
            except (ProcessLookupError, PermissionError):
                break
            time.sleep(0.1)
        else:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signal.SIGKILL)
        self.proc = None


def make_server(kind: str, models_dir: Path, settings: HttpSettings, log_dir: Path) -> Server:
    port = free_port()
    common = ["--port", str(port), "--workers", str(settings.workers)]
    if kind == "charlm":
        cmd = [sys.executable, "-m", "service", "serve", "--models", str(models_dir), *common]
        cmd += ["--max-batch-size", str(settings.max_batch_size), "--batch-timeout-ms", str(settings.batch_timeout_ms)]
        cmd += ["--log-level", "warning"]
        ready = "/ready"
    elif kind == "noop":
        cmd = [sys.executable, "-m", "benchmarks.baseline", "noop", *common]
        cmd += ["--max-batch-size", str(settings.max_batch_size), "--batch-timeout-ms", str(settings.batch_timeout_ms)]
        ready = "/health"
    elif kind == "baseline":
        cmd = [sys.executable, "-m", "benchmarks.baseline", "baseline", *common, "--models", str(models_dir)]
        cmd += ["--model", SHAKESPEARE, "--threads", str(settings.baseline_threads)]
        ready = "/health"
    else:
        raise ValueError(kind)
    return Server(kind, cmd, ready, log_dir / f"{kind}.log", port)


@contextlib.contextmanager
def running(server: Server, timeout_s: float) -> Iterator[Server]:
    try:
        server.start(timeout_s)
        yield server
    finally:
        server.stop()


# ----- load generation -----

LUA = r"""
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = [==[@BODY@]==]

local threads = {}
ok, non200, tokens, stops = 0, 0, 0, 0

function setup(thread)
  table.insert(threads, thread)
end

function response(status, headers, body)
  if status ~= 200 then
    non200 = non200 + 1
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
  for _, thread in ipairs(threads) do
    for k, _ in pairs(t) do
      t[k] = t[k] + (thread:get(k) or 0)
    end
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"ok":%d,"non200":%d,"tokens":%d,"stops":%d,' ..
    '"connect":%d,"read":%d,"write":%d,"timeout":%d,"p50_us":%d,"p95_us":%d,"p99_us":%d,"max_us":%d}\n',
    summary.requests, summary.duration, t.ok, t.non200, t.tokens, t.stops,
    e.connect, e.read, e.write, e.timeout,
    latency:percentile(50.0), latency:percentile(95.0), latency:percentile(99.0), latency.max))
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


def _row(scenario: Scenario, concurrency: int, res: dict, ttft: list[float], probe_errors: int) -> dict:
    seconds = res["duration_us"] / 1e6
    errors = res["non200"] + res["connect"] + res["read"] + res["write"] + res["timeout"]
    done = res["requests"] > 0  # wrk reports 0 latencies when nothing finished within its duration

    def ms(key: str) -> float | None:
        return round(res[key] / 1000, 2) if done else None

    return {
        "scenario": scenario.name,
        "route": scenario.route,
        "concurrency": concurrency,
        "requests": res["requests"],
        "errors": errors,
        "requests_per_s": round(res["ok"] / seconds, 2),
        "chars_per_s": round((res["tokens"] - res["stops"]) / seconds, 1),
        "p50_ms": ms("p50_us"),
        "p95_ms": ms("p95_us"),
        "p99_ms": ms("p99_us"),
        "ttft_ms": round(statistics.median(ttft) * 1000, 2) if ttft else None,
        "ratio": None,
        "duration_s": round(seconds, 2),
        "ttft_samples": len(ttft),
        "ttft_errors": probe_errors,
    }


def _bench_scenario(server: Server, scenario: Scenario, settings: HttpSettings, workdir: Path, log) -> list[dict]:
    check = sample_chars(server.url, scenario)
    if not check["ok"]:
        log(
            f"  WARNING {scenario.name}: text has {check['text_chars']} chars, "
            f"tokens - stops = {check['formula_chars']}"
        )
    streams = server.name == "charlm"
    levels = scenario.concurrency(settings)
    rows = []
    for i, c in enumerate(levels):
        prober = None
        idle_ttft: list[float] = []
        probe_errors = 0
        if streams and c == 1:  # the single-request figure: the probe alone on an idle server
            idle = Prober(server.url, scenario, settings.ttft_requests)
            idle.run()
            idle_ttft, probe_errors = idle.ttfts, idle.errors
        elif streams:
            prober = Prober(server.url, scenario, None, interval=0.25)
            prober.start()
        try:
            res = run_wrk(server.url + scenario.route, scenario.body, c, settings, workdir)
        finally:
            if prober is not None:
                prober.halt.set()
                prober.join(150)
        ttft = prober.ttfts if prober is not None else idle_ttft
        probe_errors = prober.errors if prober is not None else probe_errors
        row = _row(scenario, c, res, ttft, probe_errors)
        row["chars_check"] = check
        rows.append(row)
        ttft_txt = f", ttft {row['ttft_ms']} ms" if row["ttft_ms"] is not None else ""
        log(
            f"  {scenario.name:<20} c={c:<3} {row['requests_per_s']:>8.1f} req/s {row['chars_per_s']:>10,.0f} chars/s"
            f"  p50 {row['p50_ms']} p99 {row['p99_ms']} ms, {row['errors']} errors{ttft_txt}"
        )
        last = i == len(levels) - 1
        if not last or server.name == "charlm":
            drain(server.url, scenario)
    return rows


def add_ratios(rows: list[dict]) -> None:
    """names* requests/s against noop, shakespeare* chars/s against shakespeare-baseline, same concurrency."""
    by_key = {(r["scenario"], r["concurrency"]): r for r in rows}
    for r in rows:
        if r["scenario"] in ("noop", "shakespeare-baseline"):
            r["ratio"] = None
            continue
        names = r["scenario"].startswith("names")
        ref = by_key.get(("noop" if names else "shakespeare-baseline", r["concurrency"]))
        metric = "requests_per_s" if names else "chars_per_s"
        if ref is not None and ref.get(metric):
            r["ratio"] = round(r[metric] / ref[metric], 3)


def run_http(models_dir: Path, settings: HttpSettings, log: Callable[[str], None] = print) -> tuple[list[dict], dict]:
    """Rows for the JSON's "http" list, and per-server facts (startup seconds, errors)."""
    if not _which("wrk"):
        raise BenchError("wrk is not installed (Debian: apt-get install wrk); it is the load generator")
    chosen = scenarios(settings)
    for name in sorted({s.body["model"] for s in chosen}):
        model_entry(models_dir, name)  # fail in a second, saying `make models`, not after a server timeout
    log(
        f"http: wrk -t{settings.wrk_threads} -d{settings.duration_s}s per level; servers with {settings.workers} "
        f"worker(s), max_batch_size {settings.max_batch_size}, batch_timeout {settings.batch_timeout_ms} ms"
    )
    rows: list[dict] = []
    servers: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="charlm-bench-http-") as tmp:
        workdir = Path(tmp)
        for kind in ("charlm", "noop", "baseline"):
            mine = [s for s in chosen if s.server == kind]
            if not mine:
                continue
            server = make_server(kind, models_dir, settings, workdir)
            info: dict[str, Any] = {"command": " ".join(server.cmd[1:])}
            servers[kind] = info
            try:
                with running(server, settings.ready_timeout_s):
                    info["startup_s"] = round(server.startup_s, 2)
                    log(f"  {kind} server ready in {server.startup_s:.1f} s on port {server.port}")
                    for scenario in mine:
                        try:
                            rows += _bench_scenario(server, scenario, settings, workdir, log)
                        except BenchError as exc:
                            info.setdefault("errors", []).append(f"{scenario.name}: {exc}")
                            log(f"  {scenario.name}: FAILED: {exc}")
            except BenchError as exc:
                info.setdefault("errors", []).append(str(exc))
                log(f"  {kind} server: FAILED: {exc}")
    add_ratios(rows)
    return rows, servers


def _which(cmd: str) -> bool:
    import shutil

    return shutil.which(cmd) is not None


def settings_dict(settings: HttpSettings) -> dict[str, Any]:
    return asdict(settings)
