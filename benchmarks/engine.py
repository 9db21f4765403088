"""Engine benchmark: tokens/s of four ways to sample from the same weights, in one process.

Methods (all at temperature 1.0, fixed seeds, the same thread count for torch and ONNX Runtime):
- baseline:    nanoGPT's sample.py (benchmarks.baseline.nanogpt_generate): eager, full recompute per step;
- eager-kv:    the eager net's KV-cache `step()` with the engine's context rule (at block_size, re-prefill
               the last block_size // 2 tokens), torch.multinomial sampling;
- torchscript: charlm's engine, `Generator.load(entry, backend="torchscript")`;
- onnx:        charlm's engine, `Generator.load(entry, backend="onnx")`.
Every method starts from the same one-token prompt ("\\n", nanoGPT's default start) and generates exactly
`new_tokens` tokens per sequence (shakespeare-gpt has no end token). Per batch size: one warm-up call per
method (block_size + 8 tokens: every context length and one re-prefill), then `repeats` rounds with
the methods interleaved (so background load hits all alike); the median round is reported, and each
method's ratio to the baseline's median.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchmarks.common import SHAKESPEARE, BenchError, median, model_entry, timed

METHODS = ("baseline", "eager-kv", "torchscript", "onnx")


@dataclass(frozen=True)
class EngineSettings:
    model: str = SHAKESPEARE
    new_tokens: int = 256
    batches: tuple[int, ...] = (1, 8, 32)
    repeats: int = 3
    threads: int = 2
    seed: int = 1337
    prompt: str = "\n"

    @classmethod
    def quick(cls, threads: int) -> EngineSettings:
        """A smoke run: small batches, and just enough tokens to pass block_size (128) once."""
        return cls(new_tokens=136, batches=(1, 4), repeats=3, threads=threads)


def kv_generate(net: Any, idx: Any, max_new_tokens: int, temperature: float, generator: Any) -> Any:
    """Eager KV-cache sampling with the engine's context rule; idx [B, T] -> new tokens [B, max_new]."""
    import torch
    import torch.nn.functional as F

    block = net.cfg.block_size
    keep = max(1, block // 2)
    batch = idx.shape[0]
    zero = torch.tensor([0])
    seq = idx[:, -block:]
    out = []
    with torch.no_grad():
        logits, cache = net.step(seq, zero, net.empty_cache(batch))
        length = seq.shape[1]
        for i in range(max_new_tokens):
            probs = F.softmax(logits / temperature, dim=-1)
            nxt = torch.multinomial(probs, num_samples=1, generator=generator)
            out.append(nxt)
            if i == max_new_tokens - 1:
                break
            seq = torch.cat((seq, nxt), dim=1)
            if length >= block:  # cache full: restart from the last `keep` tokens, the new one included
                seq = seq[:, -keep:]
                logits, cache = net.step(seq, zero, net.empty_cache(batch))
                length = keep
            else:
                logits, cache = net.step(nxt, torch.tensor([length]), cache)
                length += 1
    return torch.cat(out, dim=1)


def _methods(entry: Any, settings: EngineSettings) -> dict[str, Callable[[int, int], int]]:
    """name -> run(batch, new_tokens) that generates and returns the number of new tokens it produced."""
    import torch

    from benchmarks.baseline import nanogpt_generate
    from benchmarks.common import load_eager_gpt
    from service.engine import Generator, SamplingParams

    torch.set_num_threads(settings.threads)
    net = load_eager_gpt(entry)
    stoi = {ch: i for i, ch in enumerate(entry.manifest.vocab)}
    try:
        prompt_ids = [stoi[ch] for ch in settings.prompt]
    except KeyError:
        raise BenchError(f"prompt {settings.prompt!r} is outside {entry.manifest.name}'s vocabulary") from None

    def baseline(batch: int, n: int) -> int:
        gen = torch.Generator().manual_seed(settings.seed)
        idx = torch.tensor([prompt_ids] * batch, dtype=torch.long)
        out = nanogpt_generate(net, idx, n, 1.0, None, gen)
        return int(out.shape[0] * (out.shape[1] - idx.shape[1]))

    def eager_kv(batch: int, n: int) -> int:
        gen = torch.Generator().manual_seed(settings.seed)
        idx = torch.tensor([prompt_ids] * batch, dtype=torch.long)
        return int(kv_generate(net, idx, n, 1.0, gen).numel())

    def engine(backend: str) -> Callable[[int, int], int]:
        generator = Generator.load(entry, backend=backend, threads=settings.threads)  # type: ignore[arg-type]

        def run(batch: int, n: int) -> int:
            params = [SamplingParams(temperature=1.0, seed=settings.seed + i, max_new_tokens=n) for i in range(batch)]
            done = generator.generate([settings.prompt] * batch, params)
            return sum(c.completion_tokens for c in done)

        return run

    methods = {"baseline": baseline, "eager-kv": eager_kv, "torchscript": engine("torchscript")}
    methods["onnx"] = engine("onnx")
    # The torchscript backend sets torch's pool size itself; make sure it is still ours.
    torch.set_num_threads(settings.threads)
    return methods


def run_engine(models_dir: Path, settings: EngineSettings, log: Callable[[str], None] = print) -> list[dict]:
    """Rows for the JSON's "engine" list: method, batch, tokens_per_s, ratio (+ the raw runs)."""
    entry = model_entry(models_dir, settings.model)
    methods = _methods(entry, settings)
    log(
        f"engine: {settings.model}, {settings.new_tokens} new tokens, batches {list(settings.batches)}, "
        f"{settings.repeats} runs after a warm-up, {settings.threads} thread(s) for torch and ONNX Runtime"
    )
    n = settings.new_tokens
    # Warm-up: first-call allocations and kernel choices for every shape the runs will see (context
    # lengths up to block_size and one re-prefill), without paying for a whole baseline run.
    warm = min(n, entry.manifest.block_size + 8)
    rows: list[dict] = []
    for batch in settings.batches:
        expected = batch * n
        for name, run in methods.items():
            got = run(batch, warm)
            if got != batch * warm:
                raise BenchError(f"engine {name} at batch {batch} generated {got} tokens, expected {batch * warm}")
        seconds: dict[str, list[float]] = {name: [] for name in methods}
        for _ in range(settings.repeats):
            for name, run in methods.items():
                elapsed, got = timed(lambda run=run, batch=batch: run(batch, n))
                if got != expected:
                    raise BenchError(f"engine {name} at batch {batch} generated {got} tokens, expected {expected}")
                seconds[name].append(elapsed)
        base = expected / median(seconds["baseline"])
        for name in methods:
            tps = expected / median(seconds[name])
            rows.append(
                {
                    "method": name,
                    "batch": batch,
                    "tokens_per_s": round(tps, 1),
                    "ratio": None if name == "baseline" else round(tps / base, 2),
                    "runs_s": [round(s, 4) for s in seconds[name]],
                }
            )
            log(
                f"  batch {batch:>2} {name:<12} {tps:>10,.0f} tok/s"
                + (f"  {tps / base:6.2f}x" if name != "baseline" else "")
            )
    return rows


def settings_dict(settings: EngineSettings) -> dict[str, Any]:
    return asdict(settings)
