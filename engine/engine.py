"""`Engine`: one model, a fixed table of slots, continuous batching one step at a time.

In the spirit of vLLM's engine core and llama.cpp's slots: `add` puts a request in a free slot (its
prompt is prefilled, and its first token comes out, at the next `step`, or a later one when that step's
prefill budget is spent: see GPTRunner); `step` makes one model call
for all live slots (plus one prefill call for the slots just taken), samples, applies stop strings and
frees finished slots at once; `abort` frees a slot now. A request never waits for another to finish,
and a step costs what its live rows cost: finished rows leave the arrays, and live rows are kept in
rows 0..n-1 (a leaving row's place is taken by the last one), so every call reads one contiguous block.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np

from contract import Manifest, ModelEntry, family
from engine.backends import Backend, BackendName, Device, load_backend
from engine.logprobs import prompt_logprobs, token_logprobs
from engine.novelty import DataHashes
from engine.penalties import Penalties
from engine.rules import MAX_NEW_TOKENS_CAP, default_max_new_tokens, offending_chars, prompt_problem
from engine.runners import GPTRunner
from engine.sampling import Sampler
from engine.sequence import Sequence as Seq
from engine.types import BackendUnavailable, Delta, EngineError, InvalidPrompt, SamplingParams
from engine.window import WindowRunner

DEFAULT_SLOTS = 32


class Engine:
    """A loaded model with `slots` preallocated sequences; not thread-safe (one scheduler drives it)."""

    max_new_tokens_cap: int = MAX_NEW_TOKENS_CAP

    def __init__(
        self, manifest: Manifest, runner: GPTRunner | WindowRunner, backend: str, device: str, slots: int, threads: int
    ):
        self.manifest, self.backend, self.device, self.slots, self.threads = manifest, backend, device, slots, threads
        self.data_hashes: DataHashes | None = None  # a `lines` model folder's training samples (Engine.load)
        self.runner = runner
        self.pad_token = pad_token(manifest)
        self._vocab = np.array(manifest.vocab, dtype=object)
        self._stoi = {ch: i for i, ch in enumerate(manifest.vocab)}
        self._sampler = Sampler(slots, manifest.vocab_size)
        self._penalties = Penalties(slots, manifest.vocab_size, manifest.boundary_token)
        self._top = np.full(slots, -1, dtype=np.int64)  # logprobs alternatives per row (-1: none asked)
        self._all = np.arange(slots)  # rows [0, n) when every row samples: a view, not a new array per step
        self._vocab_list = list(manifest.vocab)
        # live rows that adjust their logits / ask for logprobs: a step whose rows asked for neither skips
        # that work without looking at any row (kept up to date by add and _release)
        self._adjusting = self._scoring = 0
        self._seqs: list[Seq | None] = [None] * slots
        self._row: dict[Hashable, int] = {}
        self._n = 0

    @classmethod
    def load(
        cls,
        entry: ModelEntry,
        backend: BackendName = "onnx",
        device: Device = "cpu",
        threads: int = 1,
        slots: int = DEFAULT_SLOTS,
    ) -> Engine:
        """Open the model's `backend` file on `device`; BackendUnavailable when that cannot run here."""
        manifest = entry.manifest
        if threads < 1 or slots < 1:
            raise ValueError(f"threads and slots must be >= 1, got {threads} and {slots}")
        if backend not in ("onnx", "torchscript"):
            raise BackendUnavailable(f"unknown backend {backend!r} (onnx or torchscript)")
        if backend not in manifest.files:
            raise BackendUnavailable(f"{manifest.name} has no {backend} file (it has: {', '.join(manifest.files)})")
        graph = load_backend(entry.folder / manifest.files[backend].path, manifest, backend, device)
        engine = cls.from_backend(manifest, graph, threads=threads, slots=slots)
        engine.data_hashes = DataHashes.load(entry.folder, manifest)
        return engine

    @classmethod
    def from_backend(cls, manifest: Manifest, graph: Backend, threads: int = 1, slots: int = DEFAULT_SLOTS) -> Engine:
        """An engine over an already-opened backend (e.g. TorchEagerBackend for training's eager net);
        `manifest` may be a `model_spec` when there is no model folder."""
        if threads < 1 or slots < 1:
            raise ValueError(f"threads and slots must be >= 1, got {threads} and {slots}")
        runner_cls = GPTRunner if family(manifest.arch).kv_cache else WindowRunner
        runner = runner_cls(graph, manifest, pad_token(manifest), slots, threads)
        logits = runner.warmup()
        if logits.ndim != 2 or logits.shape[1] != manifest.vocab_size:
            raise EngineError(
                f"{manifest.name}: the graph gives logits of shape {list(logits.shape)}, "
                f"the manifest's vocabulary has {manifest.vocab_size} characters"
            )
        return cls(manifest, runner, graph.name, graph.device, slots, threads)

    # -- capacity ------------------------------------------------------------------------------------
    def active(self) -> int:
        return self._n

    def free(self) -> int:
        return self.slots - self._n

    def prefills(self) -> bool:
        """Whether the next step also prefills (or scores) a prompt: its time is not a decode step's."""
        return self.runner.prefills(self._n)

    def has_capacity(self) -> bool:
        return self._n < self.slots

    def is_novel(self, sample: str) -> bool | None:
        """Whether a whole `lines` sample is absent from the data the model was trained on (None: the
        model carries no hashes of its data)."""
        return None if self.data_hashes is None else self.data_hashes.is_novel(sample)

    def cache_bytes_per_slot(self) -> int:
        """Memory one slot's KV cache takes at block_size positions (0 for window models)."""
        return self.runner.kv.bytes_per_slot() if isinstance(self.runner, GPTRunner) else 0

    # -- requests ------------------------------------------------------------------------------------
    def default_max_new_tokens(self) -> int:
        """lines: until the boundary, at most 64; stream: 256."""
        return default_max_new_tokens(self.manifest)

    def encode_prompt(self, prompt: str) -> list[int]:
        """Token ids of `prompt`; InvalidPrompt naming every character the model cannot take (the rule
        the HTTP side checks too, from service.protocol)."""
        problem = prompt_problem(self.manifest, prompt)
        if problem is not None:
            outside, mark = offending_chars(self.manifest, prompt)
            raise InvalidPrompt(problem, (*outside, mark) if mark is not None else outside)
        return [self._stoi[ch] for ch in prompt]

    def add(self, request_id: Hashable, prompt_ids: Sequence[int], sampling: SamplingParams) -> bool:
        """Take a free slot for this request; False when there is none (nothing else changes then).

        Checked before a slot is taken: ids outside the vocabulary or the boundary mark (InvalidPrompt),
        max_new_tokens over the cap and a request id already running (ValueError).
        """
        ids = list(prompt_ids)
        boundary, vocab = self.manifest.boundary_token, self.manifest.vocab_size
        bad = [i for i in ids if not 0 <= i < vocab or i == boundary]
        if bad:
            raise InvalidPrompt(f"prompt token ids outside {self.manifest.name}'s vocabulary: {bad[:8]}")
        max_new = self.max_new_for(sampling)
        if sampling.logprobs is not None and sampling.logprobs > vocab:
            raise ValueError(f"logprobs {sampling.logprobs} exceeds the vocabulary size {vocab}")
        if any(not 0 <= t < vocab for t, _ in sampling.logit_bias):
            raise ValueError(f"logit_bias has token ids outside the vocabulary (0..{vocab - 1})")
        if request_id in self._row:
            raise ValueError(f"request {request_id!r} is already running")
        if self._n == self.slots:
            return False
        row = self._n
        self._n += 1
        self._row[request_id] = row
        context = [boundary, *ids] if boundary is not None else ids
        self._seqs[row] = Seq(request_id, len(ids), max_new, sampling, boundary)
        self._sampler.set(row, sampling)
        self._penalties.set(row, sampling, ids)
        self._top[row] = -1 if sampling.logprobs is None else sampling.logprobs
        self._adjusting += bool(self._penalties.active[row])
        self._scoring += sampling.logprobs is not None
        self.runner.start(row, context, score=sampling.prompt_logprobs)
        return True

    def abort(self, request_id: Hashable) -> bool:
        """Free the request's slot now; False when it is not running (finished, or never added)."""
        row = self._row.get(request_id)
        if row is None:
            return False
        self._release([row])
        return True

    def step(self) -> list[Delta]:
        """One model step for every live slot; the deltas it produced (finished ones leave their slot)."""
        n = self._n
        if n == 0:
            return []
        logits = self.runner.forward(n)
        waiting = self.runner.waiting(n)
        if waiting is None:
            rows = self._all[:n]
        else:  # rows whose prefill waits for a later step sample nothing (their RNG untouched)
            rows = np.flatnonzero(~waiting)
            logits = logits[rows]
        adjusted = self._penalties.apply(rows, logits) if self._adjusting else logits
        tokens = self._sampler.sample(rows, adjusted) if self._sampler.drawing else adjusted.argmax(axis=1)
        if self._adjusting:
            self._penalties.record(rows, tokens)
        self.runner.feed(rows, tokens)
        if self.runner.scores:
            self._prompt_logprobs()
        return self._push(
            rows.tolist(), tokens.tolist(), self._logprobs(rows, logits, tokens) if self._scoring else None
        )

    def _push(self, rows: list[int], tokens: list[int], lps: list | None) -> list[Delta]:
        """Each row's sampled token into its sequence; the deltas, and the finished rows freed."""
        seqs, vocab = self._seqs, self._vocab_list
        deltas, done = [], []
        for i, r in enumerate(rows):
            seq = seqs[r]
            t = tokens[i]
            delta = seq.push(t, vocab[t], lps[i] if lps else None) if seq.max_new else seq.finish_now()
            if delta is not None:
                deltas.append(delta)
                if delta.finish_reason is not None:
                    done.append(r)
        if done:
            self._release(done)
        return deltas

    def _prompt_logprobs(self) -> None:
        seqs = self._seqs
        for row, (context, scores) in self.runner.scores.items():
            top = max(0, int(self._top[row]))
            seqs[row].prompt_lps = prompt_logprobs(context, seqs[row].prompt_tokens, scores, top)
        self.runner.scores.clear()

    def _logprobs(self, rows: np.ndarray, logits: np.ndarray, tokens: np.ndarray) -> list:
        """Per sampled row, the token's raw logprob with its alternatives, for the rows that asked."""
        top = self._top[rows]
        out: list = [None] * len(tokens)
        asked = np.flatnonzero(top >= 0)
        if asked.size:
            k = int(top[asked].max())
            for i, lp in zip(asked.tolist(), token_logprobs(logits[asked], tokens[asked], k), strict=True):
                out[i] = lp if len(lp.top) == top[i] else type(lp)(lp.token, lp.logprob, lp.top[: top[i]])
        return out

    def _release(self, rows: list[int]) -> None:
        """Free `rows`, filling each hole with the current last row (highest holes first)."""
        for row in sorted(rows, reverse=True):
            del self._row[self._seqs[row].request_id]
            self._adjusting -= bool(self._penalties.active[row])
            self._scoring -= bool(self._top[row] >= 0)
            self._sampler.release(row)
            last = self._n - 1
            if row != last:
                self._seqs[row] = self._seqs[last]
                self._row[self._seqs[row].request_id] = row
                self._sampler.move(last, row)
                self._penalties.move(last, row)
                self._top[row] = self._top[last]
                self.runner.move(last, row)
            self._seqs[last] = None
            self._n = last

    def max_new_for(self, params: SamplingParams) -> int:
        """The sequence's token budget: its max_new_tokens or the default; ValueError over the cap."""
        if params.max_new_tokens is None:
            return self.default_max_new_tokens()
        if params.max_new_tokens > self.max_new_tokens_cap:
            raise ValueError(f"max_new_tokens {params.max_new_tokens} exceeds the cap {self.max_new_tokens_cap}")
        return params.max_new_tokens


def model_spec(
    name: str,
    arch: str,
    vocab: Sequence[str],
    boundary_token: int | None,
    block_size: int,
    n_layer: int | None = None,
    n_head: int | None = None,
    head_dim: int | None = None,
) -> Manifest:
    """The manifest fields the engine reads, for a model that has no folder yet (a training checkpoint):
    built without the file, metrics and provenance entries only a model folder has."""
    vocab = list(vocab)
    if len(set(vocab)) != len(vocab) or (boundary_token is not None and not 0 <= boundary_token < len(vocab)):
        raise ValueError("vocab must be distinct characters and boundary_token one of their indices")
    fmt = "lines" if boundary_token is not None else "stream"
    return Manifest.model_construct(
        name=name, arch=arch, vocab=vocab, format=fmt, boundary_token=boundary_token, block_size=block_size,
        n_layer=n_layer, n_head=n_head, head_dim=head_dim,
    )  # fmt: skip


def pad_token(manifest: Manifest) -> int:
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
