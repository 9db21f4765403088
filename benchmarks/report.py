"""From a result JSON to markdown tables and docs/benchmarks.md (the verdicts are benchmarks.targets')."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks.served_shape import ENGINES, SHAPES
from benchmarks.targets import targets

__all__ = ["markdown", "summary_lines", "targets", "write_docs"]


def summary_lines(result: dict) -> list[str]:
    lines = []
    for t in result.get("targets") or targets(result):
        verdict = {True: "MET   ", False: "MISSED", None: "N/A   "}[t["met"]]
        lines.append(f"{verdict} {t['target']}: {t['detail']}")
    return lines


def _fmt(value: Any, spec: str = ",.0f") -> str:
    return "–" if value is None else format(value, spec)


def _ratio(value: Any) -> str:
    return "–" if value is None else f"{value:.2f}x"


def _pct(value: Any) -> str:
    return "–" if value is None else f"{value:.0%}"


def _engine(result: dict) -> list[str]:
    rows = [r for r in result.get("engine") or [] if "threads" in r]
    if not rows:
        return []
    info = result.get("engine_info") or {}
    es = result.get("run", {}).get("settings", {}).get("engine", {})
    ceilings = ", ".join(f"{t} thread(s) {c['gflops']:.1f} GFLOP/s" for t, c in (info.get("ceilings") or {}).items())
    parity = info.get("hf_parity")
    lines = [
        f"### Engine ({es.get('model', 'shakespeare-gpt')}, tokens/s, median of {es.get('repeats', '?')} runs "
        "after a warm-up)",
        "",
        f"fp32 sgemm ceiling (torch matmul, same run): {ceilings or '–'}. FLOP per token "
        f"{(info.get('flop_per_token') or 0) / 1e6:.2f} M (benchmarks/ceiling.py). HF logits parity with charlm's "
        f"net: {'–' if parity is None else f'{parity:.1e}'}. *use* = tokens/s x FLOP per token / the ceiling.",
        "",
    ]

    def cell(method: str, t: int, b: int, n: int) -> dict | None:
        return next(
            (r for r in rows if (r["method"], r["threads"], r["batch"], r["new_tokens"]) == (method, t, b, n)), None
        )

    keys = sorted({(r["threads"], r["batch"]) for r in rows})
    for ref, methods in (
        ("baseline", ("baseline", "eager-kv", "torchscript", "onnx")),
        ("hf", ("hf", "torchscript", "onnx")),
    ):
        group = [r for r in rows if r.get("vs") == ref]
        if not group:
            continue
        n = group[0]["new_tokens"]
        lines += [
            f"{n} new tokens per sequence; ratios over {ref}:",
            "",
            "| threads | batch | " + " | ".join(methods) + f" | onnx / {ref} | torchscript / {ref} | onnx use |",
            "|---:|---:|" + "---:|" * (len(methods) + 3),
        ]
        for t, b in keys:
            cells = {m: cell(m, t, b, n) for m in methods}
            if not any(cells.values()):
                continue
            tps = " | ".join(_fmt(c["tokens_per_s"]) if c else "–" for c in cells.values())
            onnx, ts = cells.get("onnx"), cells.get("torchscript")
            lines.append(
                f"| {t} | {b} | {tps} | {_ratio(onnx and onnx['ratio'])} | {_ratio(ts and ts['ratio'])} | "
                f"{_pct(onnx and onnx['utilisation'])} |"
            )
        lines.append("")
    return lines


def _served(result: dict) -> list[str]:
    rows = result.get("served") or []
    if not rows:
        return []
    info = result.get("served_info") or {}
    ss = result.get("run", {}).get("settings", {}).get("served", {})
    parity = "; ".join(
        f"{p} {g['equal']}/{g['rows']} rows equal"
        + (
            f", the others first differ at character {min(g['first_difference'])} at the earliest, "
            f"{g['first_difference_median']:g} at the median"
            if g["first_difference"]
            else ""
        )
        for p, g in (info.get("greedy_parity") or {}).items()
    )
    lines = [
        f"### Served shape vs CTranslate2 ({ss.get('model', 'shakespeare-gpt')}, {ss.get('new_tokens', '?')} new "
        f"tokens per row, tokens/s, median of {ss.get('repeats', '?')} interleaved runs after a warm-up)",
        "",
        f"CTranslate2 {info.get('ctranslate2', '?')}, converted from the model folder's weights in the run. "
        f'Greedy parity with charlm ({ss.get("new_tokens", "?")} characters, "\\n" + '
        f"{ss.get('parity_rows', '?')} served prompts): {parity or '–'}. *charlm / it*: charlm's tokens/s over "
        "that row's (same shape, batch and threads); *served / lockstep*: the engine's own ratio.",
        "",
        "| threads | batch | shape | charlm | CT2 float32 | CT2 int8 | charlm / CT2 f32 | charlm / CT2 int8 "
        "| charlm served / lockstep |",
        "|---:|---:|:---|---:|---:|---:|---:|---:|---:|",
    ]
    keys = sorted({(r["threads"], r["batch"], SHAPES.index(r["shape"])) for r in rows})
    for t, b, shape in ((t, b, SHAPES[i]) for t, b, i in keys):
        cells = {r["engine"]: r for r in rows if (r["threads"], r["batch"], r["shape"]) == (t, b, shape)}
        tps = " | ".join(_fmt(cells[e]["tokens_per_s"]) if e in cells else "–" for e in ENGINES)
        f32, i8, ours = cells.get("ct2-float32"), cells.get("ct2-int8"), cells.get("charlm")
        lines.append(
            f"| {t} | {b} | {shape} | {tps} | {_ratio(f32 and f32['charlm_over'])} | "
            f"{_ratio(i8 and i8['charlm_over'])} | {_ratio(ours and ours['over_lockstep'])} |"
        )
    return [*lines, ""]


def _arrivals(result: dict) -> list[str]:
    rows = result.get("arrivals") or []
    if not rows:
        return []
    a = result.get("run", {}).get("settings", {}).get("arrivals", {})
    lines = [
        f"### Continuous arrivals (engine level, ONNX, {a.get('threads', '?')} thread(s); Poisson over "
        f"{a.get('duration_s', '?')} s: names-gpt n=1 {a.get('names_rate', '?')}/s, shakespeare-gpt "
        f"{a.get('shakespeare_rate', '?')}/s x {a.get('shakespeare_tokens', '?')} tokens)",
        "",
        "First token: from arrival (what a client sees) and from admission (`add`); *steps*: in units of the "
        "median scheduler step of that engine. v1-reference: benchmarks/v1_reference.py.",
        "",
        "| engine | requests | tokens/s | first token p50 / p99 ms | add -> first p50 / p99 ms | p99 add -> first "
        "(steps) | median step ms | longest admission wait ms | found no room | names-gpt first token p99 ms |",
        "|:---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r['engine']} | {r['requests']} | {_fmt(r['tokens_per_s'])} | {_fmt(r['ttft_p50_ms'], '.1f')} / "
        f"{_fmt(r['ttft_p99_ms'], '.1f')} | {_fmt(r['add_to_first_p50_ms'], '.1f')} / "
        f"{_fmt(r['add_to_first_p99_ms'], '.1f')} | {r['add_to_first_p99_steps']:.2f} | {r['median_step_ms']:.2f} | "
        f"{_fmt(r['max_admission_wait_ms'], '.1f')} | {r.get('waited_for_capacity', '–')} | "
        f"{_fmt(r['names_ttft_p99_ms'], '.1f')} |"
        for r in rows
    ]
    return [*lines, ""]


def _http(result: dict) -> list[str]:
    http = result.get("http") or []
    if not http:
        return []
    hs = result.get("run", {}).get("settings", {}).get("http", {})
    lines = [
        f"### HTTP (wrk -d{hs.get('duration_s', '?')}s per row; server: {hs.get('workers', '?')} worker(s), "
        f"max_batch_size {hs.get('max_batch_size', '?')})",
        "",
        "names rows: ratio = requests/s over noop's; shakespeare rows: chars/s over shakespeare-baseline's "
        "(same concurrency). chars/s: wrk's count of the requests that completed within its window; steady: "
        "the closed loop's rate by Little's law, concurrency x chars per request / mean latency. "
        "TTFT: at concurrency 1 on an idle server, above it under the wrk load. "
        "head-of-line: latency of 1-token names-gpt requests while two shakespeare-gpt n=64 x 2,048 run.",
        "",
        "| scenario | route | conc. | requests | errors | req/s | chars/s | steady chars/s | p50 ms | p95 ms "
        "| p99 ms | TTFT p50 / p99 ms | ratio |",
        "|:---|:---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r['scenario']} | {r['route']} | {r['concurrency']} | {_fmt(r.get('requests'), 'd')} | "
        f"{_fmt(r.get('errors'), 'd')} | {_fmt(r.get('requests_per_s'), ',.1f')} | {_fmt(r.get('chars_per_s'))} | "
        f"{_fmt(r.get('steady_chars_per_s'))} | "
        f"{_fmt(r.get('p50_ms'), '.1f')} | {_fmt(r.get('p95_ms'), '.1f')} | {_fmt(r.get('p99_ms'), '.1f')} | "
        f"{_fmt(r.get('ttft_ms'), '.1f')} / {_fmt(r.get('ttft_p99_ms'), '.1f')} | {_ratio(r.get('ratio'))} |"
        for r in http
    ]
    for r in http:
        if r.get("batches"):
            lines.append("")
            lines.append(
                "mixed (both routes, both models, one worker pool): `charlm_batch_size` per engine step: "
                + "; ".join(
                    f"{m} mean {b['mean_batch']} over {b['steps']:,} steps, {b['share_above_8']:.0%} above 8"
                    for m, b in r["batches"].items()
                )
            )
    return [*lines, ""]


def _ttfb(result: dict) -> list[str]:
    rows = result.get("ttfb") or []
    if not rows:
        return []
    s = result.get("run", {}).get("settings", {}).get("ttfb", {})
    lines = [
        f"### First byte ({s.get('model', '?')}, streamed /v1/generate, {s.get('max_new_tokens', '?')} tokens, "
        "closed loop, raw-socket client; benchmarks/ttfb.py)",
        "",
        "Client TTFT: request written -> first event with text read, at the client. Sampling TTFT: the "
        "server's `timing.first_token_ms` of the same requests (admission -> first character sampled). "
        "Server first byte: charlm_time_to_first_byte_seconds (request received -> that event written), mean.",
        "",
        "| conc. | requests | client TTFT p50 / p99 ms | sampling TTFT p50 ms | client / sampling | server first byte "
        "mean ms |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r['concurrency']} | {r['requests']} | {_fmt(r['client_ttft_p50_ms'], '.1f')} / "
        f"{_fmt(r.get('client_ttft_p99_ms'), '.1f')} | {_fmt(r['sampling_ttft_p50_ms'], '.1f')} | "
        f"{_ratio(r['ratio'])} | {_fmt(r.get('server_first_byte_mean_ms'), '.1f')} |"
        for r in rows
    ]
    return [*lines, ""]


def _training(result: dict) -> list[str]:
    training = result.get("training") or []
    if not training:
        return []
    ts = result.get("run", {}).get("settings", {}).get("training", {})
    lines = [
        f"### Training ({ts.get('threads', '?')} torch threads; steps after {ts.get('warmup', '?')} warm-up, "
        f"median of {ts.get('rounds', '?')} alternating rounds)",
        "",
        "| config | method | steps | tokens/s | vs baseline |",
        "|:---|:---|---:|---:|---:|",
    ]
    lines += [
        f"| {r['config']} | {r['method']} | {r.get('steps', '–')} | {_fmt(r['tokens_per_s'])} | {_ratio(r['ratio'])} |"
        for r in training
    ]
    return [*lines, ""]


def markdown(result: dict) -> str:
    """The tables (engine, served, arrivals, HTTP, first byte, training) and the targets, for the docs and the
    terminal."""
    m = result.get("machine", {})
    run = result.get("run", {})
    lines = [
        f"Machine: {m.get('cpu')}, {m.get('cores')} cores; Python {m.get('python')}, torch {m.get('torch')}, "
        f"onnxruntime {m.get('onnxruntime')}, transformers {m.get('transformers')}, litserve {m.get('litserve')}.",
        f"Run: {run.get('started_at', '?')}, {run.get('wall_s', '?')} s"
        + (" — **quick smoke run: not representative**" if run.get("quick") else "")
        + ".",
        "",
    ]
    lines += _engine(result) + _served(result) + _arrivals(result) + _http(result) + _ttfb(result) + _training(result)
    lines += ["### Targets", ""]
    lines += [f"- {line}" for line in summary_lines(result)]
    errors = run.get("errors") or {}
    if errors:
        lines += ["", "### Errors", ""] + [f"- {k}: {v}" for k, v in errors.items()]
    return "\n".join(lines) + "\n"


def write_docs(result: dict, json_path: Path, docs_path: Path, repo: Path) -> None:
    """docs/benchmarks.md = its hand-written head (up to the results marker) + this run's tables."""
    try:
        shown = json_path.resolve().relative_to(repo)
    except ValueError:
        shown = json_path
    command = result.get("run", {}).get("command", "python -m benchmarks")
    head = docs_path.read_text().split(RESULTS_MARKER)[0] if docs_path.is_file() else "# Benchmarks\n\n"
    text = (
        head.rstrip()
        + f"\n\n{RESULTS_MARKER}\n\nLatest results of `{command}` (from `{shown}`; every run's JSON is kept in "
        "benchmarks/results/).\n\n" + markdown(result)
    )
    docs_path.parent.mkdir(parents=True, exist_ok=True)
    docs_path.write_text(text)


RESULTS_MARKER = "## Latest results"
