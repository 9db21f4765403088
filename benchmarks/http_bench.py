"""HTTP benchmark: charlm's server and the LitServe reference servers, measured side by side.

Servers (benchmarks.http_servers; each in a subprocess on a free loopback port):
- charlm:   `python -m service serve` (ONNX Runtime; workers / max_batch_size as set here);
- noop:     `python -m benchmarks.baseline noop`: charlm's request schema and the same server settings,
            predict returns a fixed name (LitServe's own ceiling on this machine);
- baseline: `python -m benchmarks.baseline baseline`: nanoGPT's sampler on the eager net, one request at
            a time, with the torch threads a charlm worker gets (cores // 2; `--baseline-threads`);
- hf:       `python -m benchmarks.hf_server` (shakespeare-hf): LitServe's dynamic batching (32) around
            Hugging Face generate, same weights and threads as the baseline; 120 new tokens (GPT-2 stops
            at block_size), so charlm's `shakespeare-120` rows are its comparison.
Load (benchmarks.http_load): wrk with a Lua script counting generated characters (completion_tokens -
finish "stop"s, checked once against a parsed reply); wrk's latency percentiles; time to first token from
an httpx client streaming the same request (alone on an idle server at concurrency 1, one extra
connection at most 4 requests/s while wrk runs above it; p50 and p99). Reference servers do not stream.
Two throughputs per row: wrk's count (characters of the requests that completed within its window) and
the closed loop's steady rate by Little's law (concurrency x characters per request / mean latency). The
count misses the requests still running when the window ends: at concurrency 32 a shakespeare request
takes about as long as a sixth of the window, so the count moves by whole waves of requests from run
to run (docs/benchmarks.md, "Counting whole waves"); the steady rate does not, and the targets read it.
mixed: names-gpt on /v1/generate and shakespeare-gpt on /v1/completions at once (http_mixed.py).
head-of-line: two shakespeare-gpt requests (n=64, 2,048 tokens, sent 0.3 s apart) run while 1-token
names-gpt requests are sent one after another and timed (p50/p95/p99), for `duration_s`.
Written against the HTTP API (docs/api.md) only, so it measures whatever server `python -m service` is.
"""

from __future__ import annotations

import statistics
import tempfile
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import NAMES, SHAKESPEARE, BenchError, model_entry
from benchmarks.http_load import Prober, drain, head_of_line, run_wrk, sample_chars
from benchmarks.http_mixed import mixed
from benchmarks.http_servers import KINDS, Server, make_server, running
from benchmarks.http_settings import HttpSettings, Scenario

NATIVE, OPENAI = "/v1/generate", "/v1/completions"
SHAKESPEARE_PROMPT = "\n"  # nanoGPT's default start; the same prompt as the engine benchmark
HF_TOKENS = 120  # what GPT-2 with n_positions = block_size = 128 can generate after a 1-char prompt


def scenarios(settings: HttpSettings) -> list[Scenario]:
    names = {"model": NAMES, "prompt": "", "n": 1}
    shake_native = {"model": SHAKESPEARE, "prompt": SHAKESPEARE_PROMPT, "max_new_tokens": settings.new_tokens}
    shake_openai = {"model": SHAKESPEARE, "prompt": SHAKESPEARE_PROMPT, "max_tokens": settings.new_tokens}
    shake_120 = {**shake_native, "max_new_tokens": HF_TOKENS}
    long = {**shake_native, "n": settings.long_n, "max_new_tokens": settings.long_tokens}
    every = [
        Scenario("names", "charlm", NATIVE, names, "names", "noop"),
        Scenario("names-openai", "charlm", OPENAI, names, "names", "noop"),
        Scenario("shakespeare", "charlm", NATIVE, shake_native, "shakespeare", "shakespeare-baseline", "\n"),
        Scenario("shakespeare-openai", "charlm", OPENAI, shake_openai, "shakespeare", "shakespeare-baseline"),
        Scenario("shakespeare-120", "charlm", NATIVE, shake_120, "hf", "shakespeare-hf", "\n"),
        Scenario("mixed", "charlm", NATIVE, names, "mixed", None),  # both routes, both models: http_mixed.py
        Scenario("head-of-line", "charlm", NATIVE, long, "head-of-line", None),  # last: it cuts two requests
        Scenario("noop", "noop", NATIVE, names, "names", None),
        Scenario("shakespeare-baseline", "baseline", NATIVE, shake_native, "shakespeare", None, "\n"),
        Scenario("shakespeare-hf", "hf", NATIVE, shake_120, "hf", None, "\n"),
    ]
    if settings.scenarios:
        unknown = set(settings.scenarios) - {s.name for s in every}
        if unknown:
            raise BenchError(f"unknown HTTP scenario(s): {', '.join(sorted(unknown))}")
        return [s for s in every if s.name in settings.scenarios]
    return every


def _ms(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)) * 1000, 2) if values else None


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
        "steady_chars_per_s": _steady(concurrency, res),
        "p50_ms": ms("p50_us"),
        "p95_ms": ms("p95_us"),
        "p99_ms": ms("p99_us"),
        "ttft_ms": round(statistics.median(ttft) * 1000, 2) if ttft else None,
        "ttft_p99_ms": _ms(ttft, 99),
        "ratio": None,
        "duration_s": round(seconds, 2),
        "ttft_samples": len(ttft),
        "ttft_errors": probe_errors,
        "first_error_status": res.get("first_error_status") or None,
    }


def _steady(concurrency: int, res: dict) -> float | None:
    """Little's law for wrk's closed loop (each connection sends its next request when the last is
    answered): requests/s = concurrency / mean latency, times the characters of a completed request.
    None unless each connection completed two requests on average: with fewer, the completed ones are
    the window's short waits (a server that answers one request at a time), and their mean is no mean."""
    if res["ok"] < 2 * concurrency or not res.get("mean_us"):
        return None
    per_request = (res["tokens"] - res["stops"]) / res["ok"]
    return round(concurrency * per_request / (res["mean_us"] / 1e6), 1)


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
            + (f" ({row['steady_chars_per_s']:,.0f} steady)" if row["steady_chars_per_s"] else "")
            + f"  p50 {row['p50_ms']} p99 {row['p99_ms']} ms, {row['errors']} errors{ttft_txt}"
            + (f" (first non-200: {row['first_error_status']})" if row["first_error_status"] else "")
        )
        last = i == len(levels) - 1
        if not last or server.name == "charlm":
            drain(server.url, scenario)
    return rows


def add_ratios(rows: list[dict]) -> None:
    """names* req/s over noop's, shakespeare* chars/s over shakespeare-baseline's (shakespeare-120 over
    shakespeare-hf's), at the same concurrency; the references and head-of-line have none."""
    by_key = {(r["scenario"], r["concurrency"]): r for r in rows}
    refs = {"names": "noop", "names-openai": "noop", "shakespeare-120": "shakespeare-hf"}
    for r in rows:
        ref_name = refs.get(r["scenario"], "shakespeare-baseline" if r["scenario"].startswith("shakespeare") else None)
        if r["scenario"] in ("noop", "shakespeare-baseline", "shakespeare-hf") or ref_name is None:
            r["ratio"] = None
            continue
        ref = by_key.get((ref_name, r["concurrency"]))
        metric = "requests_per_s" if r["scenario"].startswith("names") else "chars_per_s"
        if ref is not None and ref.get(metric):
            r["ratio"] = round(r[metric] / ref[metric], 3)


def _head_of_line(server: Server, scenario: Scenario, settings: HttpSettings, log) -> dict:
    probe = {"model": NAMES, "prompt": "", "n": 1, "max_new_tokens": 1}
    res = head_of_line(server.url, scenario.route, scenario.body, probe, settings.duration_s)
    lat = res["latencies_s"]
    row = {
        "scenario": scenario.name,
        "route": scenario.route,
        "concurrency": 1,
        "requests": len(lat) + res["errors"],
        "errors": res["errors"],
        "requests_per_s": None,
        "chars_per_s": None,
        "steady_chars_per_s": None,
        "p50_ms": _ms(lat, 50),
        "p95_ms": _ms(lat, 95),
        "p99_ms": _ms(lat, 99),
        "ttft_ms": None,
        "ttft_p99_ms": None,
        "ratio": None,
        "long_status": res["long_status"],
        "long_first_s": [round(x, 3) for x in res["long_first_s"]],
        "first_error": res["first_error"] or None,
    }
    log(
        f"  {scenario.name:<20} {len(lat)} names requests while 2 x (n={settings.long_n}, {settings.long_tokens} "
        f"tokens) ran (status {res['long_status']}): p50 {row['p50_ms']} p99 {row['p99_ms']} ms, "
        f"{res['errors']} errors" + (f" (first: {res['first_error']})" if res["first_error"] else "")
    )
    return row


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
        for kind in KINDS:
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
                            if scenario.kind == "head-of-line":
                                rows.append(_head_of_line(server, scenario, settings, log))
                                continue
                            if scenario.kind == "mixed":
                                rows.append(mixed(server.url, settings, workdir, log))
                                continue
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
