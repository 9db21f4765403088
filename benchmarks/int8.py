"""float32 vs int8 ONNX graphs of each model, through charlm's engine: tokens/s and the test-loss rise.

    python -m benchmarks.int8 [--models DIR]

For each model folder: its int8 graph (manifest `onnx_int8`) or, when it has none, one made in a temp copy
by training.export.quantize (which also measures both test losses; "shipped" says whether the folder in
DIR carries it). Then `engine.Generator.load(at_precision(entry, p), backend="onnx", threads=1)` for both
precisions, rows from the model's boundary (lines) or "\\n" (stream), temperature 1.0, 60 new tokens
(ignore_eos), batch 1 and 32; a warm-up each, then 3 interleaved rounds; median; int8 / float32 in the
same run.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from benchmarks.common import MODELS_DIR, median, timed

BATCHES = (1, 32)
NEW_TOKENS = 60
PRECISIONS = ("float32", "int8")


def _rates(entry, batch: int, rounds: int = 3) -> dict[str, float]:  # type: ignore[no-untyped-def]
    """Median tokens/s per precision, rounds interleaved (background load hits both alike)."""
    from contract.precision import at_precision
    from engine import Generator, SamplingParams

    gens = {p: Generator.load(at_precision(entry, p), backend="onnx", threads=1, slots=batch) for p in PRECISIONS}
    params = [SamplingParams(seed=i, max_new_tokens=NEW_TOKENS, ignore_eos=True) for i in range(batch)]
    prompts = ["" if entry.manifest.format == "lines" else "\n"] * batch
    for gen in gens.values():
        gen.generate(prompts, params)  # warm-up
    runs: dict[str, list[float]] = {p: [] for p in PRECISIONS}
    for _ in range(rounds):
        for p, gen in gens.items():
            runs[p].append(batch * NEW_TOKENS / timed(lambda g=gen: g.generate(prompts, params))[0])
    return {p: median(r) for p, r in runs.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.int8", description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, default=MODELS_DIR)
    args = parser.parse_args(argv)
    from contract.repository import scan_repository
    from training.export.quantize import add_int8

    print("| model | shipped | f32 test loss | int8 test loss | rise | batch | float32 tok/s | int8 tok/s | int8/f32 |")
    print("|:---|:---|---:|---:|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for name, entry in sorted(scan_repository(args.models).models.items()):
            if "onnx" not in entry.manifest.files:
                continue
            shipped = entry.manifest.onnx_int8 is not None
            if not shipped:
                shutil.copytree(entry.folder, Path(tmp) / name)
                outcome = add_int8(Path(tmp) / name)
                entry = scan_repository(Path(tmp)).models.get(name, entry)
                if not outcome.shipped:
                    print(
                        f"| {name} | no | {outcome.float_loss:.4f} | {outcome.int8_loss:.4f} | {outcome.rise:+.4f} "
                        "| – | – | – | over the 0.01 bar |"
                    )
                    continue
            q = entry.manifest.onnx_int8
            for batch in BATCHES:
                r = _rates(entry, batch)
                print(
                    f"| {name} | {'yes' if shipped else 'no'} | {q.float_test_loss:.4f} | {q.test_loss:.4f} | "
                    f"{q.test_loss - q.float_test_loss:+.4f} | {batch} | {r['float32']:,.0f} | {r['int8']:,.0f} | "
                    f"{r['int8'] / r['float32']:.2f}x |",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
