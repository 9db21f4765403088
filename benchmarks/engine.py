"""Engine benchmark: tokens/s of every way to sample from the same weights, in one process, per thread count.

Methods (temperature 1.0, no top-k, fixed seeds, prompt "\\n", exactly N new tokens per sequence):
- baseline:    nanoGPT's sample.py (benchmarks.baseline.nanogpt_generate): eager, full recompute per step;
- eager-kv:    the eager net's v2 step (`GPT.generate_step`, a cache grown by concatenation) with the
               engine's context rule (at block_size, re-prefill the last block_size // 2 tokens);
- torchscript: charlm's engine, `Generator.load(entry, backend="torchscript", threads=t)`;
- onnx:        charlm's engine, `Generator.load(entry, backend="onnx", threads=t)`;
- hf:          Hugging Face `GPT2LMHeadModel.generate` (KV cache, do_sample, top_k 0) over the same
               weights (benchmarks.weights; logits parity checked first): what a user would pick instead.
Two groups per batch size: 256 new tokens (baseline, eager-kv, torchscript, onnx; ratio = over the
baseline) and 120 (torchscript, onnx, hf; ratio = over hf: HF cannot go past block_size = 128 positions).
Threads: torch.set_num_threads(t) for the torch methods, the engine's `threads=t` for ours. Per batch:
one warm-up call per method (block_size + 8 tokens: every context length and one re-prefill), then
`repeats` rounds with the methods interleaved (background load hits all alike); the median is reported.
Utilisation = tokens/s x FLOP per token (benchmarks.ceiling) / the fp32 sgemm rate measured in the same
run with the same thread count.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchmarks.common import SHAKESPEARE, BenchError, median, model_entry, timed

LONG = ("baseline", "eager-kv", "torchscript", "onnx")  # new_tokens, ratio over baseline
SHORT = ("torchscript", "onnx", "hf")  # hf_tokens, ratio over hf
TORCH_METHODS = ("baseline", "eager-kv", "hf")


@dataclass(frozen=True)
class EngineSettings:
    model: str = SHAKESPEARE
    new_tokens: int = 256
    hf_tokens: int = 120
    batches: tuple[int, ...] = (1, 8, 32, 128)
    baseline_max_batch: int = 32  # nanoGPT's recompute at batch 128: ~3 minutes a run
    threads: tuple[int, ...] = (1, 2)
    repeats: int = 3
    warmup_tokens: int | None = None  # None: block_size + 8
    ceiling_size: int = 2048
    seed: int = 1337
    prompt: str = "\n"

    @classmethod
    def quick(cls, threads: tuple[int, ...] = (1, 2)) -> EngineSettings:
        """A smoke run: small batches, a few tokens past block_size, one timed round."""
        return cls(
            new_tokens=136, hf_tokens=24, batches=(1, 4), threads=threads, repeats=1, warmup_tokens=8, ceiling_size=512
        )


def kv_generate(net: Any, idx: Any, max_new_tokens: int, temperature: float, generator: Any) -> Any:
    """Eager v2 KV-cache sampling with the engine's context rule; idx [B, T] -> new tokens [B, max_new]."""
    import torch
    import torch.nn.functional as F

    block = net.cfg.block_size
    keep = max(1, block // 2)
    batch = idx.shape[0]
    zeros = torch.zeros(batch, dtype=torch.long)
    seq = idx[:, -block:]
    out = []
    with torch.no_grad():
        cache = net.empty_cache(batch)
        logits = net.generate_step(seq, zeros, cache)[:, -1]
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
                cache = net.empty_cache(batch)
                logits = net.generate_step(seq, zeros, cache)[:, -1]
                length = keep
            else:
                logits = net.generate_step(nxt, torch.full((batch,), length), cache)[:, -1]
                length += 1
    return torch.cat(out, dim=1)


def _methods(entry: Any, net: Any, hf: Any, settings: EngineSettings, threads: int) -> dict[str, Callable]:
    """name -> run(batch, new_tokens) that generates and returns the number of new tokens it produced."""
    import torch

    from benchmarks.baseline import nanogpt_generate
    from benchmarks.weights import hf_generate
    from engine import Generator, SamplingParams

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
        slots = max(settings.batches)
        generator = Generator.load(entry, backend=backend, threads=threads, slots=slots)  # type: ignore[arg-type]

        def run(batch: int, n: int) -> int:
            params = [SamplingParams(temperature=1.0, seed=settings.seed + i, max_new_tokens=n) for i in range(batch)]
            done = generator.generate([settings.prompt] * batch, params)
            return sum(c.completion_tokens for c in done)

        return run

    def hf_run(batch: int, n: int) -> int:
        return hf_generate(hf, batch, prompt_ids, n, settings.seed)

    return {
        "baseline": baseline,
        "eager-kv": eager_kv,
        "torchscript": engine("torchscript"),
        "onnx": engine("onnx"),
        "hf": hf_run,
    }


def _call(name: str, run: Callable[[int, int], int], batch: int, n: int, threads: int) -> float:
    """Seconds of one run, with torch's pool set as that method expects; BenchError on a short count."""
    import torch

    # The torch methods get `threads`; the TorchScript engine gets back the one intra-op thread per graph
    # call it set at load (it spreads rows over `threads` calls itself), which the torch methods change.
    torch.set_num_threads(threads if name in TORCH_METHODS else 1)
    elapsed, got = timed(lambda: run(batch, n))
    if got != batch * n:
        raise BenchError(f"engine {name} at batch {batch} generated {got} tokens, expected {batch * n}")
    return elapsed


def _group(methods: dict, names: tuple[str, ...], batch: int, n: int, warm: int, settings: EngineSettings, t: int):
    for name in names:
        _call(name, methods[name], batch, min(n, warm), t)
    seconds: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(settings.repeats):
        for name in names:
            seconds[name].append(_call(name, methods[name], batch, n, t))
    return seconds


def run_engine(models_dir: Path, settings: EngineSettings, log: Callable[[str], None] = print) -> tuple[list, dict]:
    """Rows for the JSON's "engine" list (method, threads, batch, new_tokens, tokens/s, ratio, utilisation)
    and the run's facts for "engine_info" (HF parity, FLOP per token, sgemm ceilings)."""
    from benchmarks.ceiling import flop_per_token, sgemm_ceiling, utilisation
    from benchmarks.weights import check_hf_parity, load_eager, to_hf

    entry = model_entry(models_dir, settings.model)
    net = load_eager(entry.folder)
    hf = to_hf(net)
    parity = check_hf_parity(net, hf)
    c = net.cfg
    flop = flop_per_token(c.n_layer, c.n_embd, c.vocab_size, c.block_size)
    info: dict[str, Any] = {"hf_parity": parity, "flop_per_token": flop, "ceilings": {}}
    log(
        f"engine: {settings.model}, HF logits parity {parity:.1e}, {flop / 1e6:.2f} MFLOP/token; batches "
        f"{list(settings.batches)}, {settings.new_tokens} new tokens ({settings.hf_tokens} against HF), "
        f"median of {settings.repeats} after a warm-up"
    )
    warm = settings.warmup_tokens or c.block_size + 8
    rows: list[dict] = []
    for t in settings.threads:
        ceiling = sgemm_ceiling(t, settings.ceiling_size)
        info["ceilings"][str(t)] = ceiling
        log(f"  {t} thread(s): sgemm ceiling {ceiling['gflops']:.1f} GFLOP/s ({ceiling['size']}^3 fp32 matmul)")
        methods = _methods(entry, net, hf, settings, t)
        for batch in settings.batches:
            for names, n, ref in ((LONG, settings.new_tokens, "baseline"), (SHORT, settings.hf_tokens, "hf")):
                if batch > settings.baseline_max_batch:
                    names = tuple(m for m in names if m != "baseline")
                seconds = _group(methods, names, batch, n, warm, settings, t)
                tps = {name: batch * n / median(s) for name, s in seconds.items()}
                for name in names:
                    row = {
                        "method": name,
                        "threads": t,
                        "batch": batch,
                        "new_tokens": n,
                        "tokens_per_s": round(tps[name], 1),
                        "vs": ref,
                        "ratio": round(tps[name] / tps[ref], 2) if ref in tps and name != ref else None,
                        "utilisation": round(utilisation(tps[name], flop, ceiling["gflops"]), 4),
                        "runs_s": [round(s, 4) for s in seconds[name]],
                    }
                    rows.append(row)
                    ratio = f"{row['ratio']:6.2f}x {ref}" if row["ratio"] is not None else ""
                    log(
                        f"  t={t} batch {batch:>3} {n:>3} tok {name:<12} {tps[name]:>9,.0f} tok/s "
                        f"{row['utilisation']:6.1%} of sgemm  {ratio}"
                    )
    return rows, info


def settings_dict(settings: EngineSettings) -> dict[str, Any]:
    return asdict(settings)
