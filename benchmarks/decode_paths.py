"""The engine's two decode paths in one process: the in-place decode graph against the step graph.

`python -m benchmarks.decode_paths [--threads 1 2] [--rounds 5]`

shakespeare-gpt as shipped (decode steps through model.decode.onnx, GroupQueryAttention over the engine's
cache, written in place) against the same folder with its `onnx_decode` set to null (decode steps through
the step graph, contract v2, over a transposed-key cache the engine writes): the same engine code, the
same prefills, the two engines' rounds alternated in one process (process against process this machine
differs by up to ±25%). Shapes and prompts as the served part (benchmarks/served_shape.py), temperature
1.0, per-row seeds; the texts must be the same on both paths (the seeded draws see logits within 1e-4).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from benchmarks.common import SHAKESPEARE, BenchError, median, model_entry, timed
from benchmarks.served_shape import ServedSettings, served_prompts, shakespeare_text

PATHS = ("in-place", "step graph")


def _engines(entry, threads: int, slots: int) -> dict:
    from engine import Engine, Generator
    from engine.backends import OnnxBackend

    out = {}
    for name in PATHS:
        m = entry.manifest if name == "in-place" else entry.manifest.model_copy(update={"onnx_decode": None})
        backend = OnnxBackend(entry.folder / m.files["onnx"].path, m)
        out[name] = Generator(Engine.from_backend(m, backend, threads=threads, slots=slots))
    return out


def run(models_dir: Path, threads: list[int], rounds: int) -> None:
    settings = ServedSettings()
    entry = model_entry(models_dir, SHAKESPEARE)
    text = "".join(ch for ch in shakespeare_text() if ch in set(entry.manifest.vocab))
    print("| shape | b | threads | tok/s (in-place / step graph) | in-place / step graph | texts |")
    print("|---|---|---|---|---|---|")
    for t in threads:
        gens = _engines(entry, t, max(settings.batches))
        for shape in ("lockstep", "served"):
            for batch in settings.batches:
                prompts = ["\n"] * batch if shape == "lockstep" else served_prompts(text, batch, settings.max_prompt)
                rate = _rates(gens, prompts, settings, rounds)
                print(
                    f"| {shape} | {batch} | {t} | {rate['in-place']:,.0f} / {rate['step graph']:,.0f} "
                    f"| {rate['in-place'] / rate['step graph']:.2f}x | same |",
                    flush=True,
                )


def _rates(gens: dict, prompts: list[str], settings: ServedSettings, rounds: int) -> dict[str, float]:
    """tokens/s of each path over the median of `rounds` alternated rounds (after one warm-up round);
    BenchError when their texts differ."""
    from engine import SamplingParams

    n = settings.new_tokens
    params = [SamplingParams(temperature=1.0, seed=settings.seed + i, max_new_tokens=n) for i in range(len(prompts))]
    seconds: dict[str, list[float]] = {p: [] for p in PATHS}
    texts: dict[str, list[str]] = {}
    for r in range(rounds + 1):
        for p, gen in gens.items():
            elapsed, done = timed(lambda gen=gen: gen.generate(prompts, params))
            texts[p] = [c.text for c in done]
            if r:
                seconds[p].append(elapsed)
    if texts["in-place"] != texts["step graph"]:
        raise BenchError(f"{len(prompts)} rows: the two decode paths gave different texts")
    return {p: len(prompts) * n / median(s) for p, s in seconds.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", type=Path, default=Path(__file__).resolve().parents[1] / "models")
    ap.add_argument("--threads", type=int, nargs="+", default=[1])
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    try:
        run(args.models, args.threads, args.rounds)
    except BenchError as exc:
        raise SystemExit(f"decode_paths: {exc}") from None


if __name__ == "__main__":
    main()
