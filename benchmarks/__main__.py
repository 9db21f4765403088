"""`python -m benchmarks`: run the engine, served, arrivals, HTTP, first-byte and training benchmarks; write the
JSON and docs.

A full run (`make bench`, about 22 minutes on 2 cores: engine ~10 (1 and 2 threads, batch 1-128, HF),
served ~2 (charlm vs CTranslate2, lockstep and served shape), arrivals ~1, HTTP ~6-8, ttfb ~0.5 (client
vs sampling TTFT at concurrency 1 and 8), training ~1-1.5)
writes benchmarks/results/<UTC timestamp>.json and rewrites the results section of docs/benchmarks.md.
`--quick` is a smoke run of the same code (a minute or two per part); its JSON goes to the temp folder and
the docs are left alone (unless --out / --docs).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

from benchmarks.common import DOCS_FILE, MODELS_DIR, REPO, RESULTS_DIR, BenchError, cores, machine_info, utc_stamp
from benchmarks.http_settings import HttpSettings

PARTS = ("engine", "served", "arrivals", "http", "ttfb", "training")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smoke run, ~1 minute per part (numbers not representative)")
    p.add_argument("--only", default=",".join(PARTS), help=f"comma-separated parts to run (default {','.join(PARTS)})")
    p.add_argument("--models", type=Path, default=MODELS_DIR, help="models folder (default: the repo's models/)")
    p.add_argument("--threads", type=int, default=None, help="training's torch threads (default: all cores)")
    p.add_argument(
        "--engine-threads",
        default="1,2",
        help="engine and served thread counts, comma-separated (default 1,2; each its own rows)",
    )
    p.add_argument(
        "--baseline-threads",
        type=int,
        default=None,
        help="torch threads of the HTTP baseline server (default: what a charlm worker gets, cores // 2)",
    )
    p.add_argument("--duration", type=int, default=None, help="seconds per wrk run (default 10, quick 2)")
    p.add_argument("--scenarios", default="", help="HTTP scenarios to run (comma-separated; default all)")
    p.add_argument("--out", type=Path, default=None, help="folder for the result JSON")
    docs = p.add_mutually_exclusive_group()
    docs.add_argument("--docs", action="store_true", help="rewrite docs/benchmarks.md even for a quick/partial run")
    docs.add_argument("--no-docs", action="store_true", help="leave docs/benchmarks.md alone")
    p.add_argument("--from-json", type=Path, default=None, help="only print (and with --docs, write) a JSON's tables")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.from_json is not None:
        return _render_only(args)
    parts = [x.strip() for x in args.only.split(",") if x.strip()]
    unknown = set(parts) - set(PARTS)
    if unknown or not parts:
        print(
            f"python -m benchmarks: unknown part(s) {sorted(unknown)}; choose from {', '.join(PARTS)}", file=sys.stderr
        )
        return 2
    if "CHARLM_DATA_DIR" not in os.environ and (REPO.parent / "shared" / "data").is_dir():
        os.environ["CHARLM_DATA_DIR"] = str(REPO.parent / "shared" / "data")  # the Makefile's default
    settings = _settings(args)
    command = shlex.join(["python", "-m", "benchmarks", *(sys.argv[1:] if argv is None else argv)])
    started = time.time()
    result: dict = {
        "machine": machine_info(),
        **{key: [] for key in PARTS},
        "engine_info": {},
        "served_info": {},
        "run": {
            "command": command,
            "quick": args.quick,
            "parts": parts,
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
            "models": str(args.models),
            "settings": {part: _as_dict(part, settings[part]) for part in PARTS if part in parts},
            "timings_s": {},
            "errors": {},
        },
    }
    print(f"charlm benchmarks{' (quick smoke run)' if args.quick else ''}: {', '.join(parts)}")
    for part in parts:
        t0 = time.time()
        try:
            _run_part(part, args.models, settings[part], result)
        except BenchError as exc:
            result["run"]["errors"][part] = str(exc)
            print(f"{part}: FAILED: {exc}", file=sys.stderr)
        except Exception as exc:  # keep the other parts' numbers; the traceback is for the log
            traceback.print_exc()
            result["run"]["errors"][part] = f"{type(exc).__name__}: {exc}"
        result["run"]["timings_s"][part] = round(time.time() - t0, 1)
    result["run"]["wall_s"] = round(time.time() - started, 1)
    return _write(args, parts, result)


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    """Each part's settings, quick or full, from the command line."""
    from benchmarks import arrivals, engine, http_bench, served_shape, training_bench, ttfb

    quick, threads = args.quick, args.threads or cores()
    # The baseline server gets the per-process thread budget of a charlm worker (Settings.engine_threads:
    # cores // (2 routes x 1 worker)); the other core serves its HTTP process and wrk.
    baseline_threads = args.baseline_threads or max(1, cores() // 2)
    engine_threads = tuple(int(x) for x in args.engine_threads.split(",") if x.strip())
    http = HttpSettings.quick(baseline_threads) if quick else HttpSettings(baseline_threads=baseline_threads)
    if args.duration:
        http = HttpSettings(**{**http_bench.settings_dict(http), "duration_s": args.duration})
    if args.scenarios:
        chosen = tuple(s.strip() for s in args.scenarios.split(",") if s.strip())
        http = HttpSettings(**{**http_bench.settings_dict(http), "scenarios": chosen})
    return {
        "engine": engine.EngineSettings.quick(engine_threads)
        if quick
        else engine.EngineSettings(threads=engine_threads),
        "served": (
            served_shape.ServedSettings.quick(engine_threads)
            if quick
            else served_shape.ServedSettings(threads=engine_threads)
        ),
        "arrivals": arrivals.ArrivalSettings.quick() if quick else arrivals.ArrivalSettings(),
        "http": http,
        "ttfb": ttfb.TtfbSettings.quick() if quick else ttfb.TtfbSettings(),
        "training": (
            training_bench.TrainingSettings.quick(threads)
            if quick
            else training_bench.TrainingSettings(threads=threads)
        ),
    }


def _as_dict(part: str, settings: Any) -> dict[str, Any]:
    from benchmarks import arrivals, engine, http_bench, served_shape, training_bench, ttfb

    module = {"engine": engine, "served": served_shape, "arrivals": arrivals, "http": http_bench, "ttfb": ttfb}
    return module.get(part, training_bench).settings_dict(settings)


def _run_part(part: str, models: Path, settings: Any, result: dict) -> None:
    """One part's rows (and info) into `result`."""
    from benchmarks import arrivals, engine, http_bench, served_shape, training_bench, ttfb

    if part == "engine":
        result["engine"], result["engine_info"] = engine.run_engine(models, settings)
    elif part == "served":
        result["served"], result["served_info"] = served_shape.run_served(models, settings)
    elif part == "arrivals":
        result["arrivals"] = arrivals.run_arrivals(models, settings)
    elif part == "http":
        result["http"], result["run"]["servers"] = http_bench.run_http(models, settings)
        for kind, info in result["run"]["servers"].items():
            if info.get("errors"):
                result["run"]["errors"][f"http/{kind}"] = "; ".join(info["errors"])
    elif part == "ttfb":
        result["ttfb"] = ttfb.run_ttfb(models, settings)
    else:
        result["training"] = training_bench.run_training(settings)


def _write(args: argparse.Namespace, parts: list[str], result: dict) -> int:
    """The JSON (and, for a complete full run or --docs, docs/benchmarks.md); the tables on stdout."""
    from benchmarks import report

    result["targets"] = report.targets(result)
    out_dir = args.out or (Path(tempfile.gettempdir()) / "charlm-bench" if args.quick else RESULTS_DIR)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / f"{utc_stamp()}.json"
    json_path.write_text(json.dumps(result, indent=2) + "\n")
    complete = not args.quick and set(parts) == set(PARTS) and not result["run"]["errors"]
    if args.docs or (complete and not args.no_docs):
        report.write_docs(result, json_path, DOCS_FILE, REPO)
        print(f"wrote {DOCS_FILE.relative_to(REPO)}")
    print()
    print(report.markdown(result))
    print(f"results: {json_path}")
    return 1 if result["run"]["errors"] else 0


def _render_only(args: argparse.Namespace) -> int:
    from benchmarks import report

    result = json.loads(args.from_json.read_text())
    result["targets"] = report.targets(result)
    print(report.markdown(result))
    if args.docs:
        report.write_docs(result, args.from_json, DOCS_FILE, REPO)
        print(f"wrote {DOCS_FILE.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
