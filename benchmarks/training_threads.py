"""1 vs 2 torch threads for each shipped training config: what `threads`' default (training/run.py) rests on.

    python -m benchmarks.training_threads            # run it quiet, then beside a busy process

Alternating ~2 s rounds of the trainer's own step (training_bench's charlm loop: `train_step` on the
trainer's batches) with 1 and 2 threads in one process, median tokens/s of 3 rounds each.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.training_bench import _Charlm
from training.config import load_config
from training.run import Run

CONFIGS = ("names_bigram", "names_mlp", "names_wavenet", "names_gpt", "shakespeare_gpt")


def main(round_s: float = 2.0, rounds: int = 3) -> None:
    for name in CONFIGS:
        cfg = load_config(name, overrides=["threads=1", "device=cpu"])
        torch.manual_seed(cfg.seed)
        run = Run(cfg, Path(tempfile.gettempdir()))  # reads the data and builds the net; writes nothing
        loop = _Charlm(run, cfg, run.model.train())
        for _ in range(3):
            loop.step()
        rates: dict[int, list[float]] = {1: [], 2: []}
        for _ in range(rounds):
            for threads, got in rates.items():
                torch.set_num_threads(threads)
                t0, tokens = time.perf_counter(), 0
                while time.perf_counter() - t0 < round_s:
                    tokens += loop.step()
                got.append(tokens / (time.perf_counter() - t0))
        one, two = statistics.median(rates[1]), statistics.median(rates[2])
        print(f"{name:<16} 1 thread {one:>10,.0f}  2 threads {two:>10,.0f} tok/s  2t/1t {two / one:.2f}x", flush=True)


if __name__ == "__main__":
    main()
