"""Training throughput: charlm's trainer step against a plain nanoGPT-style loop, same model, same init.

charlm: the body of `training.trainer.train`'s loop, run in-process with the trainer's own pieces
(`Run` for data/vocab/task/model, `make_optimizer`, `lr_at`, `Task.batch` and the one `train_step`
the trainer and lr-find also call), minus eval, checkpointing and the progress bar. Running
`python -m training train --set max_iters=N` instead would fold process start-up, the initial-loss
check and the eval passes into its tokens_per_s (metrics.jsonl measures between evals, evals
included), which is not training throughput.

baseline: nanoGPT's train.py loop: get_batch by Python-level torch.stack of random windows of the
train token stream (for `lines` data, the names joined by the boundary token), plain
torch.optim.AdamW over all parameters, the same clipping, no compile, no fused optimizer.

Both build the same net (training.nets) from the same initial weights, on the same number of torch
threads. Tokens are trained targets: batch_size x block_size for nanoGPT's windows, the non-padding
targets of each batch for charlm (names rows are padded; padding is neither trained nor counted).
After `warmup` steps each, `rounds` rounds alternate the two methods (steps // rounds steps each)
and the median round is reported.
"""

from __future__ import annotations

import copy
import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchmarks.common import BenchError, median

CONFIGS = ("names_gpt", "shakespeare_gpt")


@dataclass(frozen=True)
class TrainingSettings:
    # (config, measured steps): names_gpt steps are ~30x cheaper, so more of them for the same precision.
    steps: tuple[tuple[str, int], ...] = (("names_gpt", 150), ("shakespeare_gpt", 30))
    warmup: int = 5
    rounds: int = 5  # short alternating rounds: a burst of background load hits one round, not a method
    threads: int = 2

    @classmethod
    def quick(cls, threads: int) -> TrainingSettings:
        return cls(steps=(("names_gpt", 15), ("shakespeare_gpt", 3)), warmup=2, rounds=3, threads=threads)


class _Charlm:
    """The trainer's loop body (training.trainer.train), CPU, no autocast, no compile (the configs' default)."""

    def __init__(self, run: Any, cfg: Any, model: Any):
        import torch

        from training.step import lr_at, make_optimizer, train_step, weight_average

        self.run, self.cfg, self.model = run, cfg, model
        self.optimizer = make_optimizer(model, cfg)
        self.ema = weight_average(model, cfg.ema_decay)  # the trainer updates it every step: so does this
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.lr_at, self.train_step = lr_at, train_step
        self.step_no = 0

    def step(self) -> int:
        """One optimizer step (the trainer's train_step); returns the targets it trained on."""
        cfg = self.cfg
        x, y = self.run.task.batch("train", cfg.batch_size, self.gen)
        lr = self.lr_at(self.step_no, cfg)
        self.train_step(self.model, self.optimizer, (x, y), lr, cfg.grad_clip, ema=self.ema)
        self.step_no += 1
        return int((y != -1).sum())


class _NanoGPT:
    """nanoGPT's train.py loop on the same net: stacked random windows, plain AdamW, prefetch as there."""

    def __init__(self, run: Any, cfg: Any, model: Any):
        import numpy as np
        import torch

        self.cfg, self.model = cfg, model
        self.block_size = run.block_size
        train = run.splits.get("train")
        if run.vocab.boundary is not None:  # lines: one stream of boundary-separated samples
            b = run.vocab.boundary
            train = [np.concatenate([x for s in train for x in ([b], s)] + [[b]]).astype(np.int64)]
        self.data = torch.from_numpy(train[0])
        self.optimizer = torch.optim.AdamW(
            model.parameters(), lr=cfg.learning_rate, betas=(cfg.beta1, cfg.beta2), weight_decay=cfg.weight_decay
        )
        self.iter_num = 0
        self.x, self.y = self.get_batch()

    def get_batch(self) -> tuple[Any, Any]:
        import torch

        data, bs = self.data, self.block_size
        ix = torch.randint(len(data) - bs, (self.cfg.batch_size,))
        x = torch.stack([data[i : i + bs] for i in ix])
        y = torch.stack([data[i + 1 : i + 1 + bs] for i in ix])
        return x, y

    def get_lr(self, it: int) -> float:
        cfg = self.cfg
        if it < cfg.warmup_iters:
            return cfg.learning_rate * (it + 1) / (cfg.warmup_iters + 1)
        if it > cfg.decay_iters:
            return cfg.min_lr
        ratio = (it - cfg.warmup_iters) / (cfg.decay_iters - cfg.warmup_iters)
        return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (cfg.learning_rate - cfg.min_lr)

    def step(self) -> int:
        import torch

        y = self.y
        lr = self.get_lr(self.iter_num)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        _, loss = self.model(self.x, self.y)
        self.x, self.y = self.get_batch()  # nanoGPT fetches the next batch while the GPU works
        loss.backward()
        if self.cfg.grad_clip != 0.0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.iter_num += 1
        if self.iter_num % 10 == 0:
            loss.item()  # train.py logs every 10 steps
        return y.numel()


def _bench_config(name: str, steps: int, settings: TrainingSettings, log: Callable[[str], None]) -> list[dict]:
    import torch

    from training.config import load_config
    from training.run import Run

    cfg = load_config(name, overrides=[f"threads={settings.threads}", "device=cpu"])
    torch.manual_seed(cfg.seed)
    run = Run(cfg, Path(tempfile.gettempdir()))  # Run only reads the data and builds the net; it writes nothing
    charlm_model = run.model.train()
    base_model = copy.deepcopy(charlm_model).train()
    loops: dict[str, Any] = {"charlm": _Charlm(run, cfg, charlm_model), "baseline": _NanoGPT(run, cfg, base_model)}
    per_round = max(1, steps // settings.rounds)
    for loop in loops.values():
        for _ in range(settings.warmup):
            loop.step()
    rates: dict[str, list[float]] = {m: [] for m in loops}
    trained: dict[str, int] = dict.fromkeys(loops, 0)
    for _ in range(settings.rounds):
        for method, loop in loops.items():
            t0 = time.perf_counter()
            tokens = sum(loop.step() for _ in range(per_round))
            rates[method].append(tokens / (time.perf_counter() - t0))
            trained[method] += tokens
    base = median(rates["baseline"])
    rows = []
    for method in ("charlm", "baseline"):
        tps = median(rates[method])
        rows.append(
            {
                "config": name,
                "method": method,
                "tokens_per_s": round(tps, 1),
                "ratio": None if method == "baseline" else round(tps / base, 3),
                "steps": per_round * settings.rounds,
                "tokens_per_step": round(trained[method] / (per_round * settings.rounds), 1),
                "rounds_tokens_per_s": [round(r, 1) for r in rates[method]],
            }
        )
        log(f"  {name:<16} {method:<9} {tps:>10,.0f} tok/s" + (f"  {tps / base:5.2f}x" if method == "charlm" else ""))
    return rows


def run_training(settings: TrainingSettings, log: Callable[[str], None] = print) -> list[dict]:
    """Rows for the JSON's "training" list: config, method (charlm | baseline), tokens_per_s, ratio."""
    import torch

    from training.data import DataError

    torch.set_num_threads(settings.threads)
    log(
        f"training: {', '.join(f'{c} {s} steps' for c, s in settings.steps)} after {settings.warmup} warm-up, "
        f"{settings.rounds} alternating rounds, {settings.threads} torch thread(s)"
    )
    rows = []
    for name, steps in settings.steps:
        try:
            rows += _bench_config(name, steps, settings, log)
        except (DataError, FileNotFoundError) as exc:
            raise BenchError(f"{name}: {exc} (set CHARLM_DATA_DIR to the folder with the corpora)") from None
    return rows


def settings_dict(settings: TrainingSettings) -> dict[str, Any]:
    return asdict(settings)
