"""Engine tokens/s in two traffic shapes, one engine tree against another (and CTranslate2), same run.

`python -m benchmarks.engine_shapes [--base /path/to/other/checkout] [--ct2] [--threads 1 2]`
`python -m benchmarks.engine_shapes --base /path/to/other/checkout --alternate 7` (one process, see alternate)

Shapes (shakespeare-gpt, greedy, 60 new tokens per row, all rows added at once):
- lockstep: every row starts from "\\n" (rows at one position);
- served:   row i starts from its own prompt of 1-67 characters of tinyshakespeare at a spread offset
            (rows at spread positions, as served traffic is; none slides past block_size).
Each (tree, shape, batch, threads) is one fresh process (`--one`) that times ROUNDS rounds after a
warm-up and reports their median, so two engine trees never share an import; the processes are
interleaved over the trees (background load hits them alike) and the median of `--repeats` is reported
(tokens per wall second, and per CPU second of the process: on a shared machine the second is the
steadier for one thread) with the ratios new / base and new / CTranslate2 float32, and whether every
tree gave the same greedy texts.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODEL = REPO / "models" / "shakespeare-gpt"
NEW_TOKENS = 60
ROUNDS = 3  # timed rounds per process, after one warm-up round; the process reports their median


def prompts(shape: str, batch: int) -> list[str]:
    """The rows' prompts: "\\n" each (lockstep) or 1-67 characters from spread offsets (served)."""
    if shape == "lockstep":
        return ["\n"] * batch
    text = (Path(os.environ.get("CHARLM_DATA_DIR", "data")) / "tinyshakespeare.txt").read_text()
    step = len(text) // (batch + 1)
    return [text[(i + 1) * step : (i + 1) * step + 1 + (i * 37) % 67] for i in range(batch)]


def rates(batch: int, walls: list[float], cpus: list[float]) -> tuple[float, float]:
    """tokens/s over the median round: of wall time, and of this process's CPU time."""
    return batch * NEW_TOKENS / sorted(walls)[len(walls) // 2], batch * NEW_TOKENS / sorted(cpus)[len(cpus) // 2]


def run_engine(shape: str, batch: int, threads: int) -> tuple[float, float, list[str]]:
    """tokens/s of the engine on the tree on sys.path, and its texts."""
    import engine as engine_pkg
    from benchmarks.common import model_entry
    from engine import Engine, SamplingParams

    # the tree's own model folder: each engine runs the graph its tree exports
    entry = model_entry(Path(engine_pkg.__file__).resolve().parents[1] / "models", MODEL.name)
    engine = Engine.load(entry, backend="onnx", threads=threads, slots=max(batch, 1))
    params = SamplingParams(temperature=0.0, max_new_tokens=NEW_TOKENS)
    rows = prompts(shape, batch)
    walls, cpus = [], []
    for _ in range(1 + ROUNDS):  # the first round warms up
        texts = [""] * batch
        start, cpu = time.perf_counter(), time.process_time()
        for i, p in enumerate(rows):
            engine.add(i, engine.encode_prompt(p), params)
        while engine.active():
            for d in engine.step():
                texts[d.request_id] += d.text
        walls.append(time.perf_counter() - start)
        cpus.append(time.process_time() - cpu)
    return (*rates(batch, walls[1:], cpus[1:]), texts)


def run_ct2(shape: str, batch: int, threads: int) -> tuple[float, float, list[str]]:
    """tokens/s of CTranslate2 float32 over the same weights (greedy), and its texts. CTranslate2 feeds
    the part of a prompt longer than the batch's shortest through its decoding loop, so each row stops
    when it has NEW_TOKENS new tokens (the callback)."""
    import tempfile

    import ctranslate2
    from ctranslate2.converters import TransformersConverter

    from benchmarks.weights import load_eager, read_manifest, to_hf

    hf = to_hf(load_eager(MODEL))

    class Vocab:
        bos_token = eos_token = unk_token = "c0"

        def get_vocab(self) -> dict[str, int]:
            return {f"c{i}": i for i in range(hf.config.vocab_size)}

    class InMemory(TransformersConverter):
        def load_model(self, *args, **kwargs):
            return hf

        def load_tokenizer(self, *args, **kwargs):
            return Vocab()

    vocab = read_manifest(MODEL)["vocab"]
    with tempfile.TemporaryDirectory() as tmp:
        hf.config.save_pretrained(f"{tmp}/hf")
        InMemory(f"{tmp}/hf").convert(f"{tmp}/ct2", quantization="float32", force=True)
        gen = ctranslate2.Generator(f"{tmp}/ct2", device="cpu", intra_threads=threads, compute_type="float32")
    ids = [[vocab.index(c) for c in p] for p in prompts(shape, batch)]
    forced = [len(p) - min(map(len, ids)) for p in ids]
    walls, cpus = [], []
    for _ in range(1 + ROUNDS):
        start, cpu = time.perf_counter(), time.process_time()
        out = gen.generate_batch(
            [[f"c{i}" for i in p] for p in ids],
            max_length=NEW_TOKENS + max(forced),
            include_prompt_in_result=False,
            end_token=[],
            sampling_topk=1,
            callback=(lambda s: s.step >= forced[s.batch_id] + NEW_TOKENS - 1) if any(forced) else None,
        )
        walls.append(time.perf_counter() - start)
        cpus.append(time.process_time() - cpu)
    texts = ["".join(vocab[t] for t in r.sequences_ids[0][f:]) for r, f in zip(out, forced, strict=True)]
    return (*rates(batch, walls[1:], cpus[1:]), texts)


def one(tree: str, shape: str, batch: int, threads: int) -> dict:
    fn = run_ct2 if tree == "ct2" else run_engine
    rate, cpu_rate, texts = fn(shape, batch, threads)
    return {"rate": rate, "cpu_rate": cpu_rate, "texts": texts}


def spawn(tree: str, root: str, shape: str, batch: int, threads: int) -> dict:
    env = dict(os.environ, PYTHONPATH=f"{root}:{REPO}")
    cmd = [sys.executable, "-m", "benchmarks.engine_shapes", "--one", tree, shape, str(batch), str(threads)]
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    if out.returncode:
        raise SystemExit(f"{tree} {shape} b={batch}: {out.stderr.strip().splitlines()[-1]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def import_both(base: str) -> tuple:
    """The engine package of `base` and this tree's, both imported in this process (each module keeps
    its own globals; `contract` is shared), for alternated runs in one process."""
    import importlib

    sys.path.insert(0, base)
    old = importlib.import_module("engine")
    for name in [k for k in sys.modules if k == "engine" or k.startswith("engine.")]:
        del sys.modules[name]
    sys.path[0] = str(REPO)
    new = importlib.import_module("engine")
    if not (Path(old.__file__).is_relative_to(base) and Path(new.__file__).is_relative_to(REPO)):
        raise SystemExit(f"could not import both engines ({old.__file__}, {new.__file__})")
    return old, new


def alternate(base: str, shapes: list[str], batches: list[int], rounds: int) -> None:
    """Both engines in this process, rounds alternated (1 thread): steadier ratios on a busy machine
    than process against process, whose placement on the cores differs from run to run."""
    from benchmarks.common import model_entry

    trees = dict(zip(("base", "new"), import_both(base), strict=True))
    folders = {"base": Path(base) / "models", "new": REPO / "models"}
    print("| shape | b | tok/s (new / base) | new/base | tok/CPU-s (new / base) | new/base | texts |")
    print("|---|---|---|---|---|---|---|")
    for shape in shapes:
        for batch in batches:
            engines = {
                t: m.Engine.load(model_entry(folders[t], MODEL.name), backend="onnx", threads=1, slots=batch)
                for t, m in trees.items()
            }
            walls: dict[str, list[float]] = {t: [] for t in trees}
            cpus: dict[str, list[float]] = {t: [] for t in trees}
            texts: dict[str, list[str]] = {}
            for r in range(rounds + 1):  # round 0 warms up
                for t, m in trees.items():
                    engine, params = engines[t], m.SamplingParams(temperature=0.0, max_new_tokens=NEW_TOKENS)
                    texts[t] = [""] * batch
                    start, cpu = time.perf_counter(), time.process_time()
                    for i, p in enumerate(prompts(shape, batch)):
                        engine.add(i, engine.encode_prompt(p), params)
                    while engine.active():
                        for d in engine.step():
                            texts[t][d.request_id] += d.text
                    if r:
                        walls[t].append(time.perf_counter() - start)
                        cpus[t].append(time.process_time() - cpu)
            wall = {t: rates(batch, walls[t], cpus[t])[0] for t in trees}
            per_cpu = {t: rates(batch, walls[t], cpus[t])[1] for t in trees}
            same = "same" if texts["new"] == texts["base"] else "DIFFER"
            print(
                f"| {shape} | {batch} | {wall['new']:,.0f} / {wall['base']:,.0f} | {wall['new'] / wall['base']:.2f}x "
                f"| {per_cpu['new']:,.0f} / {per_cpu['base']:,.0f} | {per_cpu['new'] / per_cpu['base']:.2f}x "
                f"| {same} |",
                flush=True,
            )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--one", nargs=4, metavar=("TREE", "SHAPE", "BATCH", "THREADS"))
    ap.add_argument("--base", help="another checkout of charlm to compare against (its engine/)")
    ap.add_argument("--ct2", action="store_true", help="add CTranslate2 float32 (pip install ctranslate2)")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 32, 128])
    ap.add_argument("--threads", type=int, nargs="+", default=[1])
    ap.add_argument("--shapes", nargs="+", default=["lockstep", "served"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--alternate", type=int, metavar="ROUNDS", help="both engines in this process (needs --base)")
    args = ap.parse_args()
    if args.alternate:
        alternate(args.base, args.shapes, args.batches, args.alternate)
        return
    if args.one:
        tree, shape, batch, threads = args.one
        print(json.dumps(one(tree, shape, int(batch), int(threads))))
        return
    trees = {"new": str(REPO)} | ({"base": args.base} if args.base else {}) | ({"ct2": str(REPO)} if args.ct2 else {})
    names = " / ".join(trees)
    print(
        f"| shape | b | threads | tok/s ({names}) | new/base | new/ct2 "
        f"| tok/CPU-s ({names}) | new/base | new/ct2 | texts |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for shape in args.shapes:
        for batch in args.batches:
            for threads in args.threads:
                rates: dict[str, list[float]] = {t: [] for t in trees}
                cpu: dict[str, list[float]] = {t: [] for t in trees}
                texts: dict[str, list[str]] = {}
                for k in range(args.repeats):
                    order = list(trees)[k % len(trees) :] + list(trees)[: k % len(trees)]
                    for tree in order:  # each tree goes first in turn: the first of a round ran slower
                        root = trees[tree]
                        got = spawn(tree, root, shape, batch, threads)
                        rates[tree].append(got["rate"])
                        cpu[tree].append(got["cpu_rate"])
                        texts[tree] = got["texts"]
                same = all(texts[t] == texts["new"] for t in texts)
                cells = []
                for table in (rates, cpu):
                    med = {t: sorted(r)[len(r) // 2] for t, r in table.items()}
                    ratio = [f"{med['new'] / med[o]:.2f}x" if o in med else "-" for o in ("base", "ct2")]
                    cells += [" / ".join(f"{med[t]:,.0f}" for t in trees), *ratio]
                print(
                    f"| {shape} | {batch} | {threads} | " + " | ".join(cells) + f" | {'same' if same else 'DIFFER'} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
