"""Served-traffic benchmark: charlm's engine against CTranslate2 on the same weights, lockstep and served shape.

Two shapes of a batch of b rows, 60 new tokens each, temperature 1.0 (no top-k), per-row seeds:
- lockstep: every row starts from "\\n" (every row at the same position: the engine benchmark's shape);
- served:   each row starts from its own prompt taken from tinyshakespeare, of length 1 + (41 i + 33) mod 67
            (every length 1..67 over 67 consecutive rows; b=1: 34 characters) at evenly spread offsets, so
            rows sit at spread positions; 67 + 60 <= block_size, so no row slides its context.
Engines: charlm (`engine.Generator.load(entry, backend="onnx", threads=t, slots=max batch)`: the public API
only, so the benchmark measures whatever engine is checked out) and CTranslate2 float32 / int8
(benchmarks.ct2, converted from the model folder's weights in the run; intra_threads=t), the same prompts.
Before anything is timed, greedy parity: charlm's greedy text from "\\n" and from the b=32 served prompts
against CTranslate2's; float32 must be equal character for character (BenchError otherwise), int8 is
reported (how many rows are equal, where the others first differ).
Per batch and thread count: one warm-up call of every (engine, shape), then `repeats` rounds with all six
interleaved, so background load hits all alike; median. Ratios (charlm / CTranslate2, served / lockstep,
2 threads / 1) are of figures from the same run.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchmarks.common import SHAKESPEARE, BenchError, median, model_entry, timed

ENGINES = ("charlm", "ct2-float32", "ct2-int8")
SHAPES = ("lockstep", "served")


@dataclass(frozen=True)
class ServedSettings:
    model: str = SHAKESPEARE
    new_tokens: int = 60
    batches: tuple[int, ...] = (1, 32, 128)
    threads: tuple[int, ...] = (1, 2)
    repeats: int = 3
    max_prompt: int = 67
    parity_rows: int = 32
    seed: int = 1337

    @classmethod
    def quick(cls, threads: tuple[int, ...] = (1, 2)) -> ServedSettings:
        """A smoke run: small batches, one timed round, a few parity rows."""
        return cls(batches=(1, 8), threads=threads, repeats=1, parity_rows=4)


def served_prompts(text: str, batch: int, max_prompt: int) -> list[str]:
    """Row i: 1 + (41 i + 33) mod max_prompt characters of `text`, at the i-th of `batch` even offsets."""
    span = len(text) - max_prompt
    if span <= 0:
        raise BenchError(f"the prompt text has {len(text)} characters, fewer than {max_prompt}")
    out = []
    for i in range(batch):
        length = 1 + (41 * i + 33) % max_prompt
        start = (2 * i + 1) * span // (2 * batch)
        out.append(text[start : start + length])
    return out


def shakespeare_text() -> str:
    from training.datasets import DataError, resolve_builtin

    try:
        return resolve_builtin("shakespeare").read_text()
    except DataError as exc:
        raise BenchError(f"{exc} (set CHARLM_DATA_DIR to the folder with the corpora)") from None


def _charlm_texts(gen: Any, prompts: list[str], n: int, temperature: float, seed: int) -> list[str]:
    from engine import SamplingParams

    params = [SamplingParams(temperature=temperature, seed=seed + i, max_new_tokens=n) for i in range(len(prompts))]
    return [c.text for c in gen.generate(prompts, params)]


def greedy_parity(gen: Any, models: dict, prompts: list[str], n: int, vocab: list[str]) -> dict[str, dict]:
    """Per CTranslate2 precision: rows compared, rows equal to charlm's greedy text, first differing
    positions of the others; BenchError when float32 differs."""
    from benchmarks.ct2 import first_difference

    stoi = {ch: i for i, ch in enumerate(vocab)}
    ours = _charlm_texts(gen, prompts, n, 0.0, 0)
    out = {}
    for precision, model in models.items():
        ids = model.generate([[stoi[ch] for ch in p] for p in prompts], n, temperature=0.0)
        theirs = ["".join(vocab[i] for i in row) for row in ids]
        diffs = [first_difference(a, b) for a, b in zip(ours, theirs, strict=True)]
        differing = [d for d in diffs if d is not None]
        out[precision] = {
            "rows": len(prompts),
            "equal": len(prompts) - len(differing),
            "first_difference": differing,
            "first_difference_median": statistics.median(differing) if differing else None,
        }
        if precision == "float32" and differing:
            row = next(i for i, d in enumerate(diffs) if d is not None)
            raise BenchError(
                f"CTranslate2 float32's greedy text differs from charlm's on {len(differing)} of {len(prompts)} "
                f"rows (row {row} {prompts[row]!r} at character {diffs[row]}: "
                f"{ours[row][: diffs[row] + 1]!r} vs {theirs[row][: diffs[row] + 1]!r})"
            )
    return out


def _runners(gen: Any, models: dict, n: int, seed: int, vocab: list[str]) -> dict[str, Callable[[list[str]], int]]:
    """engine -> run(prompts) that generates n new tokens per prompt at temperature 1.0; tokens made."""
    stoi = {ch: i for i, ch in enumerate(vocab)}

    def charlm(prompts: list[str]) -> int:
        from engine import SamplingParams

        params = [SamplingParams(temperature=1.0, seed=seed + i, max_new_tokens=n) for i in range(len(prompts))]
        return sum(c.completion_tokens for c in gen.generate(prompts, params))

    def ct2(precision: str) -> Callable[[list[str]], int]:
        def run(prompts: list[str]) -> int:
            ids = [[stoi[ch] for ch in p] for p in prompts]
            return sum(len(r) for r in models[precision].generate(ids, n, temperature=1.0, seed=seed))

        return run

    return {"charlm": charlm, "ct2-float32": ct2("float32"), "ct2-int8": ct2("int8")}


def _batch_rows(runners: dict, text: str, batch: int, t: int, settings: ServedSettings) -> list[dict]:
    n = settings.new_tokens
    shapes = {"lockstep": ["\n"] * batch, "served": served_prompts(text, batch, settings.max_prompt)}
    keys = [(e, s) for s in SHAPES for e in ENGINES]

    def call(e: str, s: str) -> float:
        elapsed, got = timed(lambda: runners[e](shapes[s]))
        if got != batch * n:
            raise BenchError(f"{e} {s} at batch {batch} generated {got} tokens, expected {batch * n}")
        return elapsed

    for e, s in keys:
        call(e, s)  # warm-up
    seconds: dict[tuple[str, str], list[float]] = {k: [] for k in keys}
    for _ in range(settings.repeats):
        for e, s in keys:
            seconds[(e, s)].append(call(e, s))
    tps = {k: batch * n / median(v) for k, v in seconds.items()}
    return [
        {
            "engine": e,
            "shape": s,
            "threads": t,
            "batch": batch,
            "new_tokens": n,
            "tokens_per_s": round(tps[(e, s)], 1),
            "charlm_over": None if e == "charlm" else round(tps[("charlm", s)] / tps[(e, s)], 2),
            "over_lockstep": round(tps[(e, s)] / tps[(e, "lockstep")], 2) if s == "served" else None,
            "runs_s": [round(x, 4) for x in seconds[(e, s)]],
        }
        for e, s in keys
    ]


def run_served(models_dir: Path, settings: ServedSettings, log: Callable[[str], None] = print) -> tuple[list, dict]:
    """Rows for the JSON's "served" list and the run's facts for "served_info" (parity, prompt lengths)."""
    from benchmarks.ct2 import Ct2Model, convert_all, require_ct2
    from benchmarks.weights import check_hf_parity, load_eager, to_hf
    from engine import Generator

    ct2 = require_ct2()
    entry = model_entry(models_dir, settings.model)
    vocab = list(entry.manifest.vocab)
    block = entry.manifest.block_size
    if settings.max_prompt + settings.new_tokens > block:
        raise BenchError(f"prompts up to {settings.max_prompt} + {settings.new_tokens} new tokens exceed {block}")
    text = "".join(ch for ch in shakespeare_text() if ch in set(vocab))
    net = load_eager(entry.folder)
    hf = to_hf(net)
    info: dict[str, Any] = {"hf_parity": check_hf_parity(net, hf), "ctranslate2": ct2.__version__}
    tmp, paths = convert_all(hf)
    rows: list[dict] = []
    with tmp:
        for t in settings.threads:
            gen = Generator.load(entry, backend="onnx", threads=t, slots=max(settings.batches))
            models = {p: Ct2Model.load(path, p, t) for p, path in paths.items()}
            if "greedy_parity" not in info:
                prompts = ["\n", *served_prompts(text, settings.parity_rows, settings.max_prompt)]
                info["greedy_parity"] = greedy_parity(gen, models, prompts, settings.new_tokens, vocab)
                log(f"served: {settings.model}, CTranslate2 {ct2.__version__}; greedy parity {_parity(info)}")
            runners = _runners(gen, models, settings.new_tokens, settings.seed, vocab)
            for batch in settings.batches:
                for row in _batch_rows(runners, text, batch, t, settings):
                    rows.append(row)
                    extra = f"  charlm/it {row['charlm_over']:.2f}x" if row["charlm_over"] else ""
                    extra += f"  served/lockstep {row['over_lockstep']:.2f}x" if row["over_lockstep"] else ""
                    log(
                        f"  t={t} batch {batch:>3} {row['shape']:<8} {row['engine']:<11} "
                        f"{row['tokens_per_s']:>9,.0f} tok/s{extra}"
                    )
    return rows, info


def _parity(info: dict) -> str:
    return "; ".join(
        f"{p} {g['equal']}/{g['rows']} rows equal"
        + (
            f" (others first differ at median character {g['first_difference_median']})"
            if g["equal"] < g["rows"]
            else ""
        )
        for p, g in info["greedy_parity"].items()
    )


def settings_dict(settings: ServedSettings) -> dict[str, Any]:
    return asdict(settings)
