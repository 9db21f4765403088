"""`Generator`: one loaded model, prompts in, completions (or streamed deltas) out."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Literal

import numpy as np

from contract import Manifest
from service.engine.backends import DEFAULT_THREADS, BackendName, Device, load_backend
from service.engine.decoders import Decoder, GPTDecoder, WindowDecoder
from service.engine.sampling import Sampler
from service.engine.types import (
    BackendUnavailable,
    Completion,
    Delta,
    EngineError,
    FinishReason,
    InvalidPrompt,
    SamplingParams,
)
from service.repository import ModelEntry

LINES_DEFAULT_MAX_NEW = 64
STREAM_DEFAULT_MAX_NEW = 256


class _Seq:
    """One sequence's text and stop logic; tokens are single characters, which keeps both simple."""

    __slots__ = (
        "boundary",
        "emitted",
        "finish_reason",
        "index",
        "max_new",
        "n_tokens",
        "prompt_tokens",
        "stops",
        "text",
    )

    def __init__(self, index: int, prompt_tokens: int, max_new: int, stops: tuple[str, ...], boundary: int | None):
        self.index = index
        self.prompt_tokens = prompt_tokens
        self.max_new = max_new
        self.stops = tuple(s for s in stops if s)
        self.boundary = boundary
        self.text = ""
        self.emitted = 0
        self.n_tokens = 0
        self.finish_reason: FinishReason | None = None

    def push(self, token: int, char: str) -> Delta | None:
        """Take one sampled token; the delta of text now safe to show (or the final one), if any."""
        self.n_tokens += 1
        if token == self.boundary:
            return self._finish("stop")
        self.text += char
        for stop in self.stops:
            # A new occurrence must end at the character just added: endswith is the whole check.
            if self.text.endswith(stop):
                self.text = self.text[: -len(stop)]
                return self._finish("stop")
        if self.n_tokens >= self.max_new:
            return self._finish("length")
        end = len(self.text) - self._held_back() if self.stops else len(self.text)
        if end <= self.emitted:
            return None
        delta = Delta(self.index, self.text[self.emitted : end], None)
        self.emitted = end
        return delta

    def _held_back(self) -> int:
        """Length of the longest tail of the text that could still grow into a stop string."""
        held = 0
        for stop in self.stops:
            for k in range(min(len(stop) - 1, len(self.text)), held, -1):
                if self.text.endswith(stop[:k]):
                    held = k
                    break
        return held

    def _finish(self, reason: FinishReason) -> Delta:
        self.finish_reason = reason
        delta = Delta(self.index, self.text[self.emitted :], reason, self.n_tokens)
        self.emitted = len(self.text)
        return delta


class _Run:
    """The state of one `stream` call: the decoder's `Stepper`."""

    def __init__(self, seqs: list[_Seq], sampler: Sampler, vocab: np.ndarray):
        self.seqs = seqs
        self.sampler = sampler
        self.vocab = vocab

    def advance(self, rows: np.ndarray, logits: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[Delta]]:
        tokens = self.sampler.sample(rows, logits)
        alive = np.ones(len(rows), dtype=bool)
        deltas: list[Delta] = []
        seqs = self.seqs
        chars = self.vocab[tokens].tolist()
        for j, (r, t, ch) in enumerate(zip(rows.tolist(), tokens.tolist(), chars, strict=True)):
            seq = seqs[r]
            delta = seq.push(t, ch)
            if delta is not None:
                deltas.append(delta)
                if delta.finish_reason is not None:
                    alive[j] = False
        return tokens, alive, deltas


class Generator:
    """One model on one backend, shared by every request of a worker (it keeps no per-call state).

    The returned text is only the completion (OpenAI style); the app may echo the prompt.
    `lines` models start each sequence at the boundary token followed by the prompt and stop when the
    boundary is sampled (finish_reason "stop", the boundary not in the text).
    """

    max_new_tokens_cap: int = 2048

    def __init__(self, manifest: Manifest, decoder: Decoder, backend: BackendName, device: Device, threads: int):
        self.manifest = manifest
        self.backend = backend
        self.device = device
        self.threads = threads
        self._decoder = decoder
        self._stoi = {ch: i for i, ch in enumerate(manifest.vocab)}
        self._vocab = np.array(manifest.vocab, dtype=object)
        self.pad_token = self._pad_token(manifest)

    @classmethod
    def load(
        cls,
        entry: ModelEntry,
        backend: Literal["onnx", "torchscript"] = "onnx",
        device: Literal["cpu", "cuda"] = "cpu",
        threads: int | None = None,
    ) -> Generator:
        """Open the model's `backend` file on `device`; BackendUnavailable when that cannot run here."""
        manifest = entry.manifest
        if backend not in ("onnx", "torchscript"):
            raise BackendUnavailable(f"unknown backend {backend!r} (onnx or torchscript)")
        if backend not in manifest.files:
            raise BackendUnavailable(f"{manifest.name} has no {backend} file (it has: {', '.join(manifest.files)})")
        threads = DEFAULT_THREADS if threads is None else threads
        runner = load_backend(entry.folder / manifest.files[backend].path, manifest, backend, device, threads)
        decoder_cls = GPTDecoder if manifest.arch == "gpt" else WindowDecoder
        decoder: Decoder = decoder_cls(runner, manifest, cls._pad_token(manifest))
        logits = decoder.warmup()
        if logits.ndim != 2 or logits.shape[1] != manifest.vocab_size:
            raise EngineError(
                f"{manifest.name}: the graph gives logits of shape {list(logits.shape)}, "
                f"the manifest's vocabulary has {manifest.vocab_size} characters"
            )
        return cls(manifest, decoder, backend, device, threads)

    @staticmethod
    def _pad_token(manifest: Manifest) -> int:
        """What stands before the first character: the boundary (lines), else a newline, space or token 0.

        `stream` models have no document-start token; a newline is the natural break in their text
        (a window of newlines reads as blank lines), and an empty prompt to a stream GPT starts from it.
        """
        if manifest.boundary_token is not None:
            return manifest.boundary_token
        for ch in ("\n", " "):
            if ch in manifest.vocab:
                return manifest.vocab.index(ch)
        return 0

    def default_max_new_tokens(self) -> int:
        """lines: until the boundary, at most 64; stream: 256."""
        return LINES_DEFAULT_MAX_NEW if self.manifest.format == "lines" else STREAM_DEFAULT_MAX_NEW

    def encode_prompt(self, prompt: str) -> list[int]:
        """Token ids of `prompt`; InvalidPrompt naming every character the model cannot take."""
        stoi = self._stoi
        ids = [stoi.get(ch, -1) for ch in prompt]
        boundary = self.manifest.boundary_token
        if -1 not in ids and (boundary is None or boundary not in ids):
            return ids
        name = self.manifest.name
        outside = tuple(dict.fromkeys(ch for ch, i in zip(prompt, ids, strict=True) if i == -1))
        parts = []
        if outside:
            listed = ", ".join(repr(ch) for ch in outside)
            parts.append(f"prompt has characters outside {name}'s vocabulary: {listed}")
        chars = outside
        if boundary is not None and boundary in ids:
            mark = self.manifest.vocab[boundary]
            parts.append(f"prompt contains {mark!r}, {name}'s line boundary, which ends a sequence")
            chars = (*outside, mark)
        raise InvalidPrompt("; ".join(parts), chars)

    def _max_new(self, params: SamplingParams) -> int:
        if params.max_new_tokens is None:
            return self.default_max_new_tokens()
        if params.max_new_tokens > self.max_new_tokens_cap:
            raise ValueError(f"max_new_tokens {params.max_new_tokens} exceeds the cap {self.max_new_tokens_cap}")
        return params.max_new_tokens

    def _start(
        self, prompts: Sequence[str], params: Sequence[SamplingParams]
    ) -> tuple[list[_Seq], Iterator[list[Delta]]]:
        """Validate everything now, then (per-sequence state, the lazy delta iterator)."""
        if len(prompts) != len(params):
            raise ValueError(f"{len(prompts)} prompts but {len(params)} sampling params")
        encoded = [self.encode_prompt(p) for p in prompts]
        boundary = self.manifest.boundary_token
        seqs = [
            _Seq(i, len(ids), self._max_new(p), p.stop, boundary)
            for i, (ids, p) in enumerate(zip(encoded, params, strict=True))
        ]
        contexts = [[boundary, *ids] for ids in encoded] if boundary is not None else encoded
        run = _Run(seqs, Sampler(params, self.manifest.vocab_size), self._vocab)
        return seqs, (deltas for deltas in self._decoder.run(contexts, run) if deltas)

    def stream(self, prompts: Sequence[str], params: Sequence[SamplingParams]) -> Iterator[list[Delta]]:
        """Deltas as they are produced: one non-empty list per model call that yielded text or finished.

        Prompts and params are checked now (InvalidPrompt / ValueError before anything is generated);
        text that might be the start of a stop string is held back until it is resolved.
        """
        return self._start(prompts, params)[1]

    def generate(self, prompts: Sequence[str], params: Sequence[SamplingParams]) -> list[Completion]:
        """Run every sequence to the end, batched together."""
        seqs, deltas = self._start(prompts, params)
        for _ in deltas:
            pass
        return [Completion(s.text, s.finish_reason or "length", s.prompt_tokens, s.n_tokens) for s in seqs]
