"""From a result JSON to the targets' verdicts, the markdown tables and docs/benchmarks.md."""

from __future__ import annotations

from pathlib import Path
from typing import Any

ENGINE_TARGET = 10.0  # ONNX tokens/s over the baseline's at batch 32
HTTP_SHAKESPEARE_TARGET = 10.0  # chars/s over the baseline server's at concurrency 32
NAMES_NOOP_TARGET = 0.70  # names-gpt n=1 requests/s over noop's at concurrency 64
NAMES_P99_MS = 250.0
TTFT_MS = 10.0


def _find(rows: list[dict], **match: Any) -> dict | None:
    for row in rows:
        if all(row.get(k) == v for k, v in match.items()):
            return row
    return None


def _margin(value: float, threshold: float, higher_is_better: bool = True) -> str:
    """How far from the threshold, in words: "met by 23%" / "missed by 40%" (relative to the threshold)."""
    if threshold == 0:
        return ""
    rel = (value / threshold - 1) * 100
    if higher_is_better:
        return f"{'met' if rel >= 0 else 'missed'} by {abs(rel):.0f}%"
    return f"{abs(rel):.0f}% {'under' if rel < 0 else 'over'} the limit"


def targets(result: dict) -> list[dict]:
    """One verdict per target of the issue: met (bool or None if not measured), value, detail."""
    out: list[dict] = []
    engine, http = result.get("engine") or [], result.get("http") or []

    onnx = [r for r in engine if r["method"] == "onnx" and r.get("ratio") is not None]
    row = _find(onnx, batch=32) or (max(onnx, key=lambda r: r["batch"]) if onnx else None)
    if row is None:
        out.append(
            {"target": "engine: ONNX >= 10x baseline tokens/s at batch 32", "met": None, "detail": "not measured"}
        )
    else:
        note = "" if row["batch"] == 32 else f" (batch {row['batch']}: batch 32 not measured)"
        out.append(
            {
                "target": "engine: ONNX >= 10x baseline tokens/s at batch 32",
                "met": row["ratio"] >= ENGINE_TARGET if row["batch"] == 32 else None,
                "value": row["ratio"],
                "detail": f"{row['ratio']:.2f}x{note}; {_margin(row['ratio'], ENGINE_TARGET)}",
            }
        )

    row = _find(http, scenario="shakespeare", concurrency=32)
    name = "HTTP: shakespeare-gpt at concurrency 32 >= 10x the baseline server's chars/s, zero errors"
    if row is None or row.get("ratio") is None:
        out.append({"target": name, "met": None, "detail": "not measured"})
    else:
        met = row["ratio"] >= HTTP_SHAKESPEARE_TARGET and row["errors"] == 0
        detail = f"{row['ratio']:.2f}x, {row['errors']} errors; {_margin(row['ratio'], HTTP_SHAKESPEARE_TARGET)}"
        out.append({"target": name, "met": met, "value": row["ratio"], "detail": detail})

    row = _find(http, scenario="names", concurrency=64)
    name = "HTTP: names-gpt n=1 at concurrency 64 >= 70% of noop's requests/s, p99 < 250 ms"
    if row is None or row.get("ratio") is None or row.get("p99_ms") is None:
        out.append({"target": name, "met": None, "detail": "not measured"})
    else:
        met = row["ratio"] >= NAMES_NOOP_TARGET and row["p99_ms"] < NAMES_P99_MS
        detail = (
            f"{row['ratio'] * 100:.0f}% of noop ({_margin(row['ratio'], NAMES_NOOP_TARGET)}), "
            f"p99 {row['p99_ms']:.0f} ms ({_margin(row['p99_ms'], NAMES_P99_MS, higher_is_better=False)})"
        )
        out.append({"target": name, "met": met, "value": row["ratio"], "detail": detail})

    singles = [r for r in http if r["concurrency"] == 1 and r.get("ttft_ms") is not None]
    name = "HTTP: single-request time to first token < 10 ms (worst charlm scenario at concurrency 1)"
    if not singles:
        out.append({"target": name, "met": None, "detail": "not measured"})
    else:
        worst = max(singles, key=lambda r: r["ttft_ms"])
        each = ", ".join(f"{r['scenario']} {r['ttft_ms']:.1f}" for r in singles)
        detail = f"worst {worst['ttft_ms']:.1f} ms ({worst['scenario']}); {_margin(worst['ttft_ms'], TTFT_MS, False)}"
        out.append(
            {
                "target": name,
                "met": worst["ttft_ms"] < TTFT_MS,
                "value": worst["ttft_ms"],
                "detail": f"{detail} [{each}]",
            }
        )
    return out


def summary_lines(result: dict) -> list[str]:
    lines = []
    for t in result.get("targets") or targets(result):
        verdict = {True: "MET   ", False: "MISSED", None: "N/A   "}[t["met"]]
        lines.append(f"{verdict} {t['target']}: {t['detail']}")
    return lines


def _fmt(value: Any, spec: str = ",.0f") -> str:
    if value is None:
        return "–"
    return format(value, spec)


def _ratio(value: Any) -> str:
    return "–" if value is None else f"{value:.2f}x"


def markdown(result: dict) -> str:
    """The tables (engine, HTTP, training) and the targets, for docs/benchmarks.md and the terminal."""
    m = result.get("machine", {})
    run = result.get("run", {})
    lines = [
        f"Machine: {m.get('cpu')}, {m.get('cores')} cores; Python {m.get('python')}, torch {m.get('torch')}, "
        f"onnxruntime {m.get('onnxruntime')}, litserve {m.get('litserve')}.",
        f"Run: {run.get('started_at', '?')}, {run.get('wall_s', '?')} s"
        + (" — **quick smoke run: not representative**" if run.get("quick") else "")
        + ".",
        "",
    ]
    engine = result.get("engine") or []
    if engine:
        es = run.get("settings", {}).get("engine", {})
        lines += [
            f"### Engine ({es.get('model', 'shakespeare-gpt')}, {es.get('new_tokens', 256)} new tokens, "
            f"{es.get('threads', '?')} threads for torch and ONNX Runtime, median of {es.get('repeats', '?')} runs)",
            "",
            "| batch | method | tokens/s | vs baseline |",
            "|---:|:---|---:|---:|",
        ]
        lines += [
            f"| {r['batch']} | {r['method']} | {_fmt(r['tokens_per_s'])} | {_ratio(r['ratio'])} |" for r in engine
        ]
        lines.append("")
    http = result.get("http") or []
    if http:
        hs = run.get("settings", {}).get("http", {})
        lines += [
            f"### HTTP (wrk -d{hs.get('duration_s', '?')}s per row; server: {hs.get('workers', '?')} worker(s), "
            f"max_batch_size {hs.get('max_batch_size', '?')}, batch_timeout {hs.get('batch_timeout_ms', '?')} ms)",
            "",
            "names rows: ratio = requests/s over noop's; shakespeare rows: chars/s over shakespeare-baseline's "
            "(same concurrency). TTFT: at concurrency 1 on an idle server, above it under the wrk load.",
            "",
            "| scenario | route | conc. | requests | errors | req/s | chars/s | p50 ms | p95 ms | p99 ms "
            "| TTFT ms | ratio |",
            "|:---|:---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        lines += [
            f"| {r['scenario']} | {r['route']} | {r['concurrency']} | {r['requests']} | {r['errors']} | "
            f"{_fmt(r['requests_per_s'], ',.1f')} | {_fmt(r['chars_per_s'])} | {_fmt(r['p50_ms'], '.1f')} | "
            f"{_fmt(r['p95_ms'], '.1f')} | {_fmt(r['p99_ms'], '.1f')} | {_fmt(r['ttft_ms'], '.1f')} | "
            f"{_ratio(r['ratio'])} |"
            for r in http
        ]
        lines.append("")
    training = result.get("training") or []
    if training:
        ts = run.get("settings", {}).get("training", {})
        lines += [
            f"### Training ({ts.get('threads', '?')} torch threads; steps after {ts.get('warmup', '?')} warm-up, "
            f"median of {ts.get('rounds', '?')} alternating rounds)",
            "",
            "| config | method | steps | tokens/s | vs baseline |",
            "|:---|:---|---:|---:|---:|",
        ]
        lines += [
            f"| {r['config']} | {r['method']} | {r.get('steps', '–')} | {_fmt(r['tokens_per_s'])} | "
            f"{_ratio(r['ratio'])} |"
            for r in training
        ]
        lines.append("")
    lines += ["### Targets", ""]
    lines += [f"- {line}" for line in summary_lines(result)]
    errors = run.get("errors") or {}
    if errors:
        lines += ["", "### Errors", ""] + [f"- {k}: {v}" for k, v in errors.items()]
    return "\n".join(lines) + "\n"


DOC_HEAD = """# Benchmarks

Latest results of `{command}` (written from `{json}`; every run's JSON is kept in benchmarks/results/).
Targets are reported, not asserted. How each number is measured: the docstrings of benchmarks/engine.py,
benchmarks/http_bench.py and benchmarks/training_bench.py, summarised at the end of this page.

"""

DOC_TAIL = """
## How it is measured

- **Engine** (one process, the same weights for every method, loaded from models/shakespeare-gpt/model.ts
  into the eager `training.nets` GPT; temperature 1.0, fixed seeds, prompt `"\\n"`, exactly 256 new tokens per
  sequence): *baseline* is nanoGPT's sample.py (full-context recompute every step, cropped to block_size,
  softmax + `torch.multinomial`); *eager-kv* is the net's KV-cache `step()` with the engine's rule (a full
  cache restarts from the last block_size // 2 tokens); *torchscript* and *onnx* are charlm's engine
  (`Generator.load(entry, backend=...)`). Torch and ONNX Runtime get the same thread count. Warm-up, then
  the methods are interleaved for each run; median of the runs; ratio to the baseline of the same run.
- **HTTP**: each server in a subprocess on a free loopback port; `wrk` (1 thread) posts the scenario's body;
  a Lua script counts non-200s and sums `usage.completion_tokens` minus `finish_reason == "stop"` (the
  end-of-name token) = generated characters, checked against a parsed response. Latency percentiles are wrk's.
  TTFT: an httpx client streaming the same request, first SSE event with generated text (concurrency 1:
  alone on an idle server, 20 requests, median; higher: one extra connection while wrk runs). *noop* is a
  LitServe endpoint with the same request schema and server settings returning a fixed name;
  *shakespeare-baseline* is a LitServe app running the engine benchmark's baseline, one request at a time,
  with the torch threads of one charlm worker (cores // 2). wrk counts only requests finished within its
  duration, so slow requests (shakespeare: 1-2 s each) read up to one request (or batch) low, for charlm
  and the baseline alike.
- Every server runs with charlm's defaults unless given: 1 worker per route, max_batch_size 32,
  batch_timeout 5 ms; CHARLM_* variables of the caller's environment are not passed on.
- **Training**: the trainer's loop body (`training.trainer`: `Run`, `make_optimizer`, `lr_at`, `Task.batch`,
  clipping; no eval) against nanoGPT's train.py loop (stacked random windows, plain `torch.optim.AdamW` over
  all parameters), same net and initial weights. Tokens are trained targets: batch_size x block_size
  for nanoGPT's windows, the non-padding targets for charlm (its names rows are padded and cut to the
  batch's longest name).
"""


def write_docs(result: dict, json_path: Path, docs_path: Path, repo: Path) -> None:
    try:
        shown = json_path.resolve().relative_to(repo)
    except ValueError:
        shown = json_path
    command = result.get("run", {}).get("command", "python -m benchmarks")
    text = DOC_HEAD.format(command=command, json=shown) + markdown(result) + DOC_TAIL
    docs_path.parent.mkdir(parents=True, exist_ok=True)
    docs_path.write_text(text)
