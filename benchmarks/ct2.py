"""CTranslate2 over the shipped weights: the dedicated CPU inference engine the served-shape benchmark measures
charlm against.

The weights travel eager net -> `transformers.GPT2LMHeadModel` (benchmarks.weights.to_hf, logits parity
checked) -> `ctranslate2.converters.TransformersConverter` (float32, or int8 weights), converted in the
benchmark into a temp folder, so what is compared is always the model folder's own weights. The converter
is handed the HF model in memory (no save/reload of the weights) and a stand-in tokenizer: charlm's
characters become the tokens "c0".."c{V-1}" (CTranslate2 takes token strings; a newline or a space as a
token name would be fragile), mapped back by id.

CTranslate2's batch is rectangular: with prompts of different lengths it forwards the shortest prefix at
once and forces the rest of each prompt through its decoding loop one token per step. `generate` gets
exactly `new_tokens` new tokens per row (checked), as charlm's rows do, so both engines do the same work.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.common import BenchError

PRECISIONS = ("float32", "int8")


def require_ct2() -> Any:
    """The ctranslate2 module, or BenchError saying how to get it (it is in the `bench` extra)."""
    try:
        import ctranslate2
    except ImportError:
        raise BenchError("ctranslate2 is not installed: pip install 'ctranslate2>=4.8' (the bench extra)") from None
    return ctranslate2


def token(i: int) -> str:
    return f"c{i}"


class _Vocabulary:
    """What TransformersConverter reads from a tokenizer: the id-ordered vocabulary and three special tokens
    (all "c0": nothing here ends a row; `generate` passes end_token=[])."""

    bos_token = eos_token = unk_token = token(0)

    def __init__(self, size: int):
        self.size = size

    def get_vocab(self) -> dict[str, int]:
        return {token(i): i for i in range(self.size)}


def convert(hf: Any, out_dir: Path, precision: str) -> Path:
    """Write the CTranslate2 model of `hf` (a GPT2LMHeadModel) under out_dir/<precision>; its path."""
    require_ct2()
    from ctranslate2.converters import TransformersConverter

    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")

    class InMemory(TransformersConverter):
        def load_model(self, model_class: Any, model_name_or_path: str, **kwargs: Any) -> Any:
            return hf

        def load_tokenizer(self, tokenizer_class: Any, model_name_or_path: str, **kwargs: Any) -> Any:
            return _Vocabulary(hf.config.vocab_size)

    config_dir = Path(out_dir) / "hf-config"
    hf.config.save_pretrained(config_dir)  # AutoConfig picks the loader (GPT2Config) from it
    target = Path(out_dir) / precision
    InMemory(str(config_dir)).convert(str(target), quantization=precision, force=True)
    return target


@dataclass
class Ct2Model:
    """One loaded CTranslate2 generator (a precision at a thread count)."""

    precision: str
    threads: int
    generator: Any

    @classmethod
    def load(cls, path: Path, precision: str, threads: int) -> Ct2Model:
        ct2 = require_ct2()
        gen = ct2.Generator(str(path), device="cpu", compute_type=precision, intra_threads=threads, inter_threads=1)
        return cls(precision, threads, gen)

    def generate(
        self, prompts: list[list[int]], new_tokens: int, temperature: float = 1.0, seed: int = 0
    ) -> list[list[int]]:
        """Exactly `new_tokens` new token ids per prompt (temperature 0: greedy; else full-distribution
        sampling, CTranslate2's seed)."""
        if temperature > 0:
            require_ct2().set_random_seed(seed)
        shortest = min(len(p) for p in prompts)
        forced = [len(p) - shortest for p in prompts]  # prompt tokens CT2 feeds through its decoding loop
        # With a shortest prompt of 2+ tokens, CT2 counts and returns only new tokens per row; with a
        # 1-token prompt in the batch it returns (and counts in max_length) the forced tokens too, so
        # each row is stopped by the callback after its own `new_tokens` and the forced ones are cut.
        counted = shortest == 1 and any(forced)

        def stop(step: Any) -> bool:  # called per token; True ends that row
            return step.step >= forced[step.batch_id] + new_tokens - 1

        results = self.generator.generate_batch(
            [[token(i) for i in p] for p in prompts],
            max_length=new_tokens + (max(forced) if counted else 0),
            include_prompt_in_result=False,
            end_token=[],
            sampling_topk=1 if temperature == 0 else 0,
            sampling_temperature=temperature if temperature > 0 else 1.0,
            callback=stop if counted else None,
        )
        seqs = [r.sequences_ids[0] for r in results]
        out = [s[f:] if counted else s for s, f in zip(seqs, forced, strict=True)]
        short = [len(o) for o in out if len(o) != new_tokens]
        if short:
            raise BenchError(f"CTranslate2 {self.precision} gave {short[:3]} new tokens per row, not {new_tokens}")
        return out


def convert_all(hf: Any) -> tuple[tempfile.TemporaryDirectory, dict[str, Path]]:
    """Both precisions in one temp folder (the caller keeps the TemporaryDirectory alive)."""
    tmp = tempfile.TemporaryDirectory(prefix="charlm-ct2-")
    return tmp, {p: convert(hf, Path(tmp.name), p) for p in PRECISIONS}


def first_difference(a: str, b: str) -> int | None:
    """Index of the first character where a and b differ (None when equal)."""
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))
