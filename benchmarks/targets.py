"""The targets of issues 10 (engine v2), 11 (service v2), 19 (engine v3) and 20 (production v3), judged on one
result JSON.

Reported, never asserted: each verdict is met (bool, or None when not measured), the figure and how far
from the threshold. Thresholds live here once; docs/benchmarks.md lists them.
"""

from __future__ import annotations

from typing import Any

ENGINE_OVER_HF = {1: 2.0, 2: 1.5}  # charlm's engine (ONNX) over HF generate, by thread count, batch 1/32/128
HF_BATCHES = (1, 32, 128)
SGEMM_USE = {32: 0.35, 128: 0.40}  # ONNX, 1 thread, 256 new tokens
ENGINE_OVER_BASELINE = 10.0  # ONNX over nanoGPT's sampler at batch 32 (the first engine's target)
ARRIVAL_STEPS = 2.0  # p99 add -> first token, in median scheduler steps
HOL_P99_MS = 50.0  # a names request's p99 while two long shakespeare requests run
HTTP_OVER_ENGINE = 0.80  # shakespeare chars/s at concurrency 32 over the engine's best batch-32 tokens/s
HTTP_OVER_SERVED = 0.85  # shakespeare chars/s at concurrency 32 over the engine's best served-shape batch 32 (issue 19)
TTFT_P50_MS, TTFT_P99_MS = 20.0, 50.0  # shakespeare at concurrency 32, both routes
HTTP_OVER_BASELINE = 10.0
NAMES_OVER_NOOP, NAMES_P99_MS = 0.90, 150.0  # names n=1 at concurrency 64
OVER_HF_SERVER = 2.0  # chars/s over shakespeare-hf at concurrency 32 (and TTFT <= half of its)
OVER_CT2 = {1: 0.6, 32: 1.0, 128: 1.0}  # charlm over CTranslate2 float32 by batch, 1 thread, both shapes
SERVED_OVER_LOCKSTEP = 0.9  # charlm's served shape over its lockstep, batch 32 and 128, 1 thread
TWO_THREADS = {32: 1.4, 128: 1.6}  # charlm 2 threads over 1, by batch, both shapes
CLIENT_OVER_SAMPLING = 1.5  # client TTFT p50 over the server's sampling TTFT p50, concurrency 8 (same run)
FIRST_BYTE_CONCURRENCY = 8


def _find(rows: list[dict], **match: Any) -> dict | None:
    return next((r for r in rows if all(r.get(k) == v for k, v in match.items())), None)


def _tps_over(rows: list[dict], mine: dict[str, Any], theirs: dict[str, Any]) -> float | None:
    """tokens/s of the row matching `mine` over that of the row matching `theirs`, unrounded (the rows' own
    ratios are rounded to 2 places: 0.9987 would read as 1.00); None where either row is missing."""
    a, b = _find(rows, **mine), _find(rows, **theirs)
    return a["tokens_per_s"] / b["tokens_per_s"] if a and b else None


def _margin(value: float, threshold: float, higher_is_better: bool = True) -> str:
    rel = (value / threshold - 1) * 100 if threshold else 0.0
    if higher_is_better:
        return f"{'met' if rel >= 0 else 'missed'} by {abs(rel):.0f}%"
    return f"{abs(rel):.0f}% {'under' if rel <= 0 else 'over'} the limit"


def _verdict(name: str, checks: list[tuple[bool, str]]) -> dict:
    if not checks:
        return {"target": name, "met": None, "detail": "not measured"}
    return {"target": name, "met": all(ok for ok, _ in checks), "detail": "; ".join(d for _, d in checks)}


def engine_targets(result: dict) -> list[dict]:
    rows = [r for r in result.get("engine") or [] if "threads" in r]  # rows of v1-era JSONs have no threads
    short = [r for r in rows if r.get("new_tokens") is not None and r.get("vs") == "hf"]
    long = [r for r in rows if r.get("vs") == "baseline"]
    out = []
    for t, need in ENGINE_OVER_HF.items():
        checks = []
        for b in HF_BATCHES:
            r = _find(short, method="onnx", threads=t, batch=b)
            if r and r["ratio"] is not None:
                checks.append((r["ratio"] >= need, f"batch {b} {r['ratio']:.2f}x"))
        out.append(_verdict(f"engine: ONNX >= {need:g}x HF generate at batch 1, 32, 128, {t} thread(s)", checks))
    checks = []
    for b, need in SGEMM_USE.items():
        r = _find(long, method="onnx", threads=1, batch=b)
        if r:
            checks.append((r["utilisation"] >= need, f"batch {b} {r['utilisation']:.0%} (>= {need:.0%})"))
    out.append(_verdict("engine: ONNX use of the 1-thread sgemm ceiling >= 35% at batch 32, >= 40% at 128", checks))
    checks = []
    for r in rows:
        if r["method"] in ("onnx", "torchscript") and r["batch"] >= 32 and r["threads"] > 1:
            fewer = _find(rows, method=r["method"], batch=r["batch"], new_tokens=r["new_tokens"], threads=1)
            if fewer:
                ratio = r["tokens_per_s"] / fewer["tokens_per_s"]
                label = f"{r['method']} b{r['batch']}/{r['new_tokens']}: {r['threads']}t/1t {ratio:.2f}x"
                checks.append((ratio >= 1.0, label))
    out.append(_verdict("engine: more threads never slower than fewer at batch >= 32", checks))
    checks = []
    for r in rows:
        if r["method"] == "onnx":
            ts = _find(rows, method="torchscript", batch=r["batch"], threads=r["threads"], new_tokens=r["new_tokens"])
            if ts:
                ratio = r["tokens_per_s"] / ts["tokens_per_s"]
                checks.append((ratio >= 1.0, f"{r['threads']}t b{r['batch']}/{r['new_tokens']}: {ratio:.2f}x"))
    out.append(_verdict("engine: ONNX >= TorchScript at every batch size", checks))
    r = _find(long, method="onnx", threads=1, batch=32)
    checks = [(r["ratio"] >= ENGINE_OVER_BASELINE, f"{r['ratio']:.2f}x")] if r and r["ratio"] else []
    out.append(_verdict("engine: ONNX >= 10x nanoGPT's sampler at batch 32, 1 thread", checks))
    v2 = _find(result.get("arrivals") or [], engine="v2")
    checks = []
    if v2:
        steps = v2["add_to_first_p99_steps"]
        checks.append((steps <= ARRIVAL_STEPS, f"p99 add -> first token {steps:.2f} steps"))
        waited = v2.get("waited_for_capacity", 0)
        checks.append((waited == 0, f"{waited} request(s) found no free slot"))
    out.append(_verdict("arrivals: p99 add -> first token <= 2 steps; no request waits for another", checks))
    return out


def _http_share(http: list[dict], best: float | None, need: float, of: str) -> dict:
    """shakespeare chars/s at concurrency 32 over an engine figure (`best` tokens/s), against `need`: the
    closed loop's steady rate (benchmarks/http_bench.py), wrk's count of completed requests beside it
    (results of runs before the steady rate was measured are judged by the count)."""
    r = _find(http, scenario="shakespeare", concurrency=32)
    checks = []
    if r and best:
        steady = r.get("steady_chars_per_s")
        share, counted = (steady or r["chars_per_s"]) / best, r["chars_per_s"] / best
        said = f"{share:.0%} of the engine's {best:,.0f} tok/s"
        if steady:
            said += f" (wrk's count of completed requests: {counted:.0%})"
        checks.append((share >= need, said))
    return _verdict(f"HTTP: shakespeare chars/s at concurrency 32 >= {need:.0%} of {of}", checks)


def http_targets(result: dict) -> list[dict]:
    http, engine = result.get("http") or [], result.get("engine") or []
    out = []
    r = _find(http, scenario="head-of-line")
    checks = [(r["p99_ms"] <= HOL_P99_MS, f"p99 {r['p99_ms']:.0f} ms")] if r and r.get("p99_ms") is not None else []
    out.append(_verdict("HTTP: names request p99 <= 50 ms while two shakespeare n=64 x 2,048 run", checks))
    best = max(
        (e["tokens_per_s"] for e in engine if e["method"] == "onnx" and e["batch"] == 32 and e.get("vs") == "baseline"),
        default=None,
    )
    out.append(_http_share(http, best, HTTP_OVER_ENGINE, "the engine's batch 32"))
    served = [s for s in result.get("served") or [] if s.get("engine") == "charlm" and s.get("shape") == "served"]
    best = max((s["tokens_per_s"] for s in served if s.get("batch") == 32), default=None)
    out.append(_http_share(http, best, HTTP_OVER_SERVED, "the engine's served shape b=32"))
    checks = []
    for scenario in ("shakespeare", "shakespeare-openai"):
        r = _find(http, scenario=scenario, concurrency=32)
        if r and r.get("ttft_ms") is not None:
            p99 = r.get("ttft_p99_ms") or r["ttft_ms"]
            ok = r["ttft_ms"] <= TTFT_P50_MS and p99 <= TTFT_P99_MS
            checks.append((ok, f"{r['route']} p50 {r['ttft_ms']:.0f} / p99 {p99:.0f} ms"))
    out.append(_verdict("HTTP: shakespeare TTFT p50 <= 20 ms, p99 <= 50 ms at concurrency 32, both routes", checks))
    r = _find(http, scenario="shakespeare", concurrency=32)
    checks = []
    if r and r.get("ratio") is not None:
        checks.append((r["ratio"] >= HTTP_OVER_BASELINE and r["errors"] == 0, f"{r['ratio']:.2f}x, {r['errors']} err"))
    out.append(_verdict("HTTP: shakespeare at concurrency 32 >= 10x the baseline server, zero errors", checks))
    r = _find(http, scenario="names", concurrency=64)
    checks = []
    if r and r.get("ratio") is not None and r.get("p99_ms") is not None:
        checks.append((r["ratio"] >= NAMES_OVER_NOOP, f"{r['ratio']:.0%} of noop"))
        checks.append((r["p99_ms"] < NAMES_P99_MS, f"p99 {r['p99_ms']:.0f} ms"))
    out.append(_verdict("HTTP: names n=1 at concurrency 64 >= 90% of noop's req/s, p99 < 150 ms", checks))
    r = _find(http, scenario="shakespeare-120", concurrency=32)  # both sides 120 tokens (GPT-2 stops at 128)
    hf = _find(http, scenario="shakespeare-hf", concurrency=32)
    checks = []
    if r and hf and hf.get("chars_per_s"):
        ratio = r["chars_per_s"] / hf["chars_per_s"]
        checks.append((ratio >= OVER_HF_SERVER, f"{ratio:.2f}x its chars/s"))
        if r.get("ttft_ms") is not None and hf.get("p50_ms"):  # HF answers whole: its first token is its reply
            checks.append((r["ttft_ms"] <= hf["p50_ms"] / 2, f"TTFT {r['ttft_ms']:.0f} vs {hf['p50_ms']:.0f} ms"))
    out.append(_verdict("HTTP: >= 2x shakespeare-hf's chars/s at concurrency 32, <= 1/2 its first-token time", checks))
    singles = [r for r in http if r.get("concurrency") == 1 and r.get("ttft_ms") is not None]
    worst = max((r["ttft_ms"] for r in singles), default=None)
    checks = [(worst < 10.0, f"worst {worst:.1f} ms")] if worst is not None else []
    out.append(_verdict("HTTP: single-request time to first token < 10 ms", checks))
    return out


def served_targets(result: dict) -> list[dict]:
    """Issue 19's engine targets, on the served-shape benchmark's rows (benchmarks.served_shape)."""
    rows = result.get("served") or []
    out = []
    checks = []
    for shape in ("lockstep", "served"):
        for b, need in OVER_CT2.items():
            at = {"shape": shape, "threads": 1, "batch": b}
            ratio = _tps_over(rows, {"engine": "charlm", **at}, {"engine": "ct2-float32", **at})
            if ratio is not None:
                checks.append((ratio >= need, f"{shape} b{b} {ratio:.3f}x (>= {need:g})"))
    out.append(_verdict("engine v3: charlm >= 1.0x CTranslate2 float32 at b=32/128, >= 0.6x at b=1, 1 thread", checks))
    checks = []
    for b in (32, 128):
        at = {"engine": "charlm", "threads": 1, "batch": b}
        ratio = _tps_over(rows, {"shape": "served", **at}, {"shape": "lockstep", **at})
        if ratio is not None:
            checks.append((ratio >= SERVED_OVER_LOCKSTEP, f"b{b} {ratio:.3f}x"))
    out.append(_verdict("engine v3: charlm served shape >= 0.9x its lockstep at b=32/128, 1 thread", checks))
    checks = []
    for shape in ("lockstep", "served"):
        for b, need in TWO_THREADS.items():
            at = {"engine": "charlm", "shape": shape, "batch": b}
            ratio = _tps_over(rows, {"threads": 2, **at}, {"threads": 1, **at})
            if ratio is not None:
                checks.append((ratio >= need, f"{shape} b{b} {ratio:.3f}x (>= {need:g})"))
    out.append(_verdict("engine v3: charlm 2 threads >= 1.4x (b=32) / 1.6x (b=128) of 1, both shapes", checks))
    return out


def first_byte_targets(result: dict) -> list[dict]:
    """Issue 20's first byte, on the ttfb part's rows (benchmarks.ttfb)."""
    r = _find(result.get("ttfb") or [], concurrency=FIRST_BYTE_CONCURRENCY)
    checks = []
    if r and r.get("ratio") is not None:
        detail = f"{r['client_ttft_p50_ms']:.1f} / {r['sampling_ttft_p50_ms']:.1f} ms = {r['ratio']:.2f}x"
        checks.append((r["ratio"] <= CLIENT_OVER_SAMPLING, detail))
    name = f"first byte: client TTFT p50 <= {CLIENT_OVER_SAMPLING:g}x the server's sampling TTFT p50 at concurrency 8"
    return [_verdict(name, checks)]


def targets(result: dict) -> list[dict]:
    return engine_targets(result) + served_targets(result) + http_targets(result) + first_byte_targets(result)
