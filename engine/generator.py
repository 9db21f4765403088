"""`Generator`: prompts in, completions (or streamed deltas) out — a thin loop over an `Engine`.

For the offline paths (`python -m service generate`, tests, benchmarks): it adds sequences while
slots are free and steps until all have finished, so it decodes by exactly the serving engine's rules.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from contract import ModelEntry
from engine.backends import BackendName, Device
from engine.engine import DEFAULT_SLOTS, Engine
from engine.types import Completion, Delta, SamplingParams, TokenLogprob


class Generator:
    """One model's engine; the returned text is only the completion (OpenAI style).

    `lines` models start each sequence at the boundary token followed by the prompt and stop when the
    boundary is sampled (finish_reason "stop", the boundary not in the text).
    """

    def __init__(self, engine: Engine):
        self.engine = engine
        self.manifest = engine.manifest

    @classmethod
    def load(
        cls,
        entry: ModelEntry,
        backend: BackendName = "onnx",
        device: Device = "cpu",
        threads: int = 1,
        slots: int = DEFAULT_SLOTS,
    ) -> Generator:
        return cls(Engine.load(entry, backend, device, threads, slots))

    def encode_prompt(self, prompt: str) -> list[int]:
        return self.engine.encode_prompt(prompt)

    def stream(self, prompts: Sequence[str], params: Sequence[SamplingParams]) -> Iterator[list[Delta]]:
        """Deltas as they are produced (request_id = the prompt's index): one non-empty list per step
        that yielded text or finished. Prompts and params are checked now, before anything runs."""
        if len(prompts) != len(params):
            raise ValueError(f"{len(prompts)} prompts but {len(params)} sampling params")
        encoded = [self.engine.encode_prompt(p) for p in prompts]
        for p in params:
            self.engine.max_new_for(p)  # the cap check, before the first step
        return self._run(encoded, params)

    def generate(self, prompts: Sequence[str], params: Sequence[SamplingParams]) -> list[Completion]:
        """Run every sequence to the end, batched together."""
        texts = [""] * len(prompts)
        lps: list[list[TokenLogprob]] = [[] for _ in prompts]
        ends: list[Delta | None] = [None] * len(prompts)
        for deltas in self.stream(prompts, params):
            for d in deltas:
                texts[d.request_id] += d.text
                lps[d.request_id] += [*(d.logprobs or ()), *([d.boundary_logprob] if d.boundary_logprob else [])]
                if d.finish_reason is not None:
                    ends[d.request_id] = d
        prompt_tokens = [len(self.engine.encode_prompt(p)) for p in prompts]
        return [
            Completion(text, end.finish_reason, pt, end.completion_tokens or 0, tuple(lp))
            for text, lp, end, pt in zip(texts, lps, ends, prompt_tokens, strict=True)
            if end is not None and end.finish_reason is not None
        ]

    def _run(self, encoded: list[list[int]], params: Sequence[SamplingParams]) -> Iterator[list[Delta]]:
        engine, waiting = self.engine, list(range(len(encoded)))
        waiting.reverse()
        while waiting or engine.active():
            while waiting and engine.has_capacity():
                i = waiting.pop()
                engine.add(i, encoded[i], params[i])
            deltas = engine.step()
            if deltas:
                yield deltas
