"""Mixed traffic: both routes and both models at once on one charlm server (one worker pool).

names-gpt n=1 on /v1/generate and shakespeare-gpt 256 tokens on /v1/completions, each from its own wrk
at the same time; the batch sizes the workers reach are read from `charlm_batch_size` (sequences per
engine step, per model) as the difference of two /metrics scrapes around the load.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from benchmarks.common import NAMES, SHAKESPEARE
from benchmarks.http_load import run_wrk

CONCURRENCY = 16  # per route: 32 connections in all


def batch_histograms(url: str) -> dict[str, dict[str, float]]:
    """model -> {"count", "sum", "le=<bucket>": cumulative count} of charlm_batch_size."""
    text = httpx.get(url + "/metrics", timeout=10).text
    out: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(text):
        if family.name != "charlm_batch_size":
            continue
        for s in family.samples:
            h = out.setdefault(s.labels["model"], {})
            if s.name.endswith("_count"):
                h["count"] = s.value
            elif s.name.endswith("_sum"):
                h["sum"] = s.value
            elif s.name.endswith("_bucket"):
                h[f"le={s.labels['le']}"] = s.value
    return out


def mixed(url: str, settings: Any, workdir: Path, log) -> dict[str, Any]:
    names = ("/v1/generate", {"model": NAMES, "prompt": "", "n": 1})
    shakespeare = ("/v1/completions", {"model": SHAKESPEARE, "prompt": "\n", "max_tokens": settings.new_tokens})
    before = batch_histograms(url)
    dirs = [workdir / "mixed-names", workdir / "mixed-shakespeare"]
    for d in dirs:
        d.mkdir(exist_ok=True)
    with ThreadPoolExecutor(2) as pool:
        runs = [
            pool.submit(run_wrk, url + route, body, CONCURRENCY, settings, d)
            for (route, body), d in zip((names, shakespeare), dirs, strict=True)
        ]
        res = [f.result() for f in runs]
    after = batch_histograms(url)
    batches = {}
    for model, h in after.items():
        b = before.get(model, {})
        steps = h.get("count", 0) - b.get("count", 0)
        if steps <= 0:
            continue
        buckets = {k: h[k] - b.get(k, 0.0) for k in h if k.startswith("le=")}
        batches[model] = {
            "steps": int(steps),
            "mean_batch": round((h["sum"] - b.get("sum", 0.0)) / steps, 2),
            "share_above_8": round(1 - buckets.get("le=8.0", 0.0) / steps, 3),
        }
    seconds = [r["duration_us"] / 1e6 for r in res]
    row = {
        "scenario": "mixed",
        "route": "/v1/generate + /v1/completions",
        "concurrency": 2 * CONCURRENCY,
        "requests": sum(r["requests"] for r in res),
        "errors": sum(r["non200"] + r["connect"] + r["read"] + r["write"] + r["timeout"] for r in res),
        "requests_per_s": round(res[0]["ok"] / seconds[0], 2),  # names
        "chars_per_s": round((res[1]["tokens"] - res[1]["stops"]) / seconds[1], 1),  # shakespeare
        "p50_ms": None,
        "p95_ms": None,
        "p99_ms": round(max(r["p99_us"] for r in res) / 1000, 2),
        "ttft_ms": None,
        "ttft_p99_ms": None,
        "ratio": None,
        "batches": batches,
    }
    log(
        f"  mixed  names {row['requests_per_s']:.1f} req/s + shakespeare {row['chars_per_s']:,.0f} chars/s"
        f" on one pool, {row['errors']} errors; batch sizes: "
        + ", ".join(f"{m} mean {v['mean_batch']} over {v['steps']} steps" for m, v in batches.items())
    )
    return row
