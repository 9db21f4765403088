"""Model-specific halves of the engine: next-token logits for the rows [0, n) of a slot table.

A runner keeps each row's model state (a GPT's KV cache, a window model's last block_size tokens) and
knows nothing of sampling or text. The engine calls, per step: `forward(n)` (logits [n, V]), then
`feed(rows, tokens)` with what it sampled for the rows that were ready (`waiting(n)`: the rows whose
prefill was put off to a later step, None when every row has its logits); `start(row, context)` when a
sequence takes a row, and `move(src, dst)` when it compacts rows after some finished.

More than one core: the rows are split into contiguous spans run as concurrent one-thread graph calls
(ONNX Runtime and torch release the GIL while they compute); with 2 intra-op threads ORT ran at half
the speed of 1 on these tiny ops. A step with prefills runs its prefill calls beside its decode spans:
every call of the step is shared by the threads, longest first.

The window models' runner is in engine/window.py.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from functools import partial

import numpy as np

from contract import Manifest
from engine.backends import Backend
from engine.kv import KVCache
from engine.prefill import PREFILL_SCRATCH_BYTES, prefill_calls
from engine.spans import MIN_SPAN, Spans  # noqa: F401 - MIN_SPAN: the span rule, read by tests

# Prefill tokens (rows x padded width) one step may take per thread, vLLM's token budget: the oldest waiting
# rows go first, one row always goes, the rest wait, so a burst of prompts (or rows sliding past block_size
# together) never makes one long step that every other request waits behind (docs/engine.md).
PREFILL_TOKENS = 128


class GPTRunner:
    """GPT through its step graph (contract v2) over an engine-owned KV cache.

    Per step: one decode call for every row that has a cache (its pending token at its own position),
    then one prefill call for the rows that start this step (new sequences, and sequences sliding past
    block_size), right-padded to the longest of them. Rows of any lengths share a call.

    Context limit: a prompt longer than block_size keeps its last block_size tokens; when a row's cache
    is full (length == block_size), it is re-prefilled from its last block_size // 2 tokens (positions
    are learned, the cache cannot slide) and continues from there, without touching the other rows.

    A step prefills at most PREFILL_TOKENS per thread (oldest first); the other fresh rows wait, so no
    step costs much more than a decode step and a burst of prefills is spread over the next few steps.
    """

    def __init__(self, backend: Backend, manifest: Manifest, pad: int, slots: int, threads: int):
        self.backend, self.pad = backend, pad
        self.block_size, self.vocab_size = manifest.block_size, manifest.vocab_size
        self.keep = max(1, manifest.block_size // 2)
        # a decode graph that writes the cache itself reads keys laid out like values (contract/graph.py)
        self.in_place = bool(getattr(backend, "decode_in_place", False))
        shape = (manifest.n_layer or 0, manifest.n_head or 0, manifest.head_dim or 0, self.block_size)
        self.kv = KVCache(slots, *shape, in_place=self.in_place, arrays=backend.arrays)
        self.n_embd = (manifest.n_head or 0) * (manifest.head_dim or 0)
        self.length = np.zeros(slots, dtype=np.int64)  # cached positions per row
        self.pending = np.zeros(slots, dtype=np.int64)  # sampled, not yet fed
        self.fresh = np.zeros(slots, dtype=bool)  # to be prefilled from its history (at the next step, or later)
        self.fresh_at = np.zeros(slots, dtype=np.int64)  # the step it became fresh: oldest prefills go first
        self._step = 0
        self.prefill_tokens = PREFILL_TOKENS * threads  # a step's prefill budget, all threads together
        self.history: list[list[int]] = [[] for _ in range(slots)]
        self._spans = Spans(threads)
        self._rows = np.arange(slots)
        self._widest = 0  # an upper bound of the rows' cached lengths after the last forward
        self._ready = False  # whether the last forward gave every row its logits
        self._inputs: dict[tuple[int, int, int], list[np.ndarray]] = {}  # steady-state decode inputs, by span
        self._to_score: dict[int, list[int]] = {}
        self.scores: dict[int, tuple[list[int], np.ndarray]] = {}  # row -> (its context, logits of context[1:])

    def start(self, row: int, context: Sequence[int], score: bool = False) -> None:
        self.history[row] = list(context)[-self.block_size :] or [self.pad]
        self.fresh[row] = True
        self.fresh_at[row] = self._step
        self.length[row] = 0
        self._to_score.pop(row, None)
        if score:
            self._to_score[row] = list(context)

    def forward(self, n: int) -> np.ndarray:
        self._step += 1
        fresh = self.fresh[:n]
        self._ready = not fresh.any()
        if self._ready:  # every row decodes: the steady state, kept free of per-step index arrays
            return self._decode(n, n, None)[0]
        self._widest = 0
        calls = self._within_budget(np.flatnonzero(fresh))
        cached = np.flatnonzero(~fresh)
        m = int(cached[-1]) + 1 if cached.size else 0  # fresh rows after the last cached one stay out
        logits, outs = self._decode(m, n, fresh[:m], calls)
        first = self._prefill(calls, outs, n)
        if m < n:  # rows still waiting get finite, unused logits
            logits = np.concatenate([logits, np.zeros((n - m, first.shape[1]), np.float32)])
        logits[np.concatenate(calls)] = first
        return logits

    def prefills(self, n: int) -> bool:
        """Whether the next step prefills some row of [0, n): a step that costs more than its decode."""
        return bool(self.fresh[:n].any())

    def waiting(self, n: int) -> np.ndarray | None:
        """Rows of [0, n) whose prefill was put off by the budget: no logits for them this step."""
        if self._ready:
            return None
        fresh = self.fresh[:n]
        return fresh if fresh.any() else None

    def feed(self, rows: np.ndarray, tokens: np.ndarray) -> None:
        self.pending[rows] = tokens
        block, history = self.block_size, self.history
        for r, t in zip(rows.tolist(), tokens.tolist(), strict=True):
            h = history[r]
            h.append(t)
            if len(h) > 2 * block:
                del h[:-block]
        if self._widest < block:  # no row's cache is full (the longest is known from forward)
            return
        for r in rows[self.length[rows] >= block].tolist():  # full: restart from the last `keep` tokens
            history[r] = history[r][-self.keep :]  # (the pending one included)
            self.fresh[r] = True
            self.fresh_at[r] = self._step

    def move(self, src: int, dst: int) -> None:
        self.kv.move(src, dst)
        for arr in (self.length, self.pending, self.fresh, self.fresh_at):
            arr[dst] = arr[src]
        self.history[dst] = self.history[src]
        if src in self._to_score:
            self._to_score[dst] = self._to_score.pop(src)

    def warmup(self) -> np.ndarray:
        """A 1-token prefill and a 1-token decode step on row 0 (the engine is empty at load)."""
        self.start(0, [self.pad])
        logits = self.forward(1)
        if self.block_size > 1:
            self.feed(np.zeros(1, np.int64), np.array([self.pad]))
            logits = self.forward(1)
        self.start(0, [self.pad])
        return logits

    def _within_budget(self, fresh: np.ndarray) -> list[np.ndarray]:
        """The fresh rows this step prefills, as calls of rows of similar lengths (prefill_calls): oldest
        first (lowest rows first among rows of one age, so the rows left waiting are mostly past the last
        cached one, out of the decode call) while the calls' tokens, padding included, fit the budget; at
        least one row."""
        lengths = np.array([len(self.history[r]) for r in fresh.tolist()], dtype=np.int64)
        order = np.argsort(self.fresh_at[fresh], kind="stable")
        rows, lengths = fresh[order], lengths[order]
        # A prefix whose rows all padded to its widest fit the budget fits however prefill_calls groups
        # it (each call pads to its own widest): only the prefixes past that are grouped to be weighed.
        widest = np.maximum.accumulate(lengths) * np.arange(1, len(rows) + 1)
        fits = max(1, int(np.searchsorted(widest, self.prefill_tokens, side="right")))
        calls = prefill_calls(lengths[:fits], self.n_embd)
        for k in range(fits + 1, len(rows) + 1):
            more = prefill_calls(lengths[:k], self.n_embd)
            if sum(len(c) * int(lengths[c].max()) for c in more) > self.prefill_tokens:
                break
            calls = more
        return [rows[c] for c in calls]

    def _decode(
        self, m: int, n: int, fresh: np.ndarray | None, calls: Sequence[np.ndarray] = ()
    ) -> tuple[np.ndarray, list[list[np.ndarray]]]:
        """One token for every row of [0, m) with a cache; fresh rows among them (None: there are none)
        ride along as ignored dummies at position 0, which keeps the rows one contiguous block (their
        dummy entries are overwritten by their prefill). The budget prefills the lowest rows first, so
        the rows left waiting are mostly past the last cached row, out of the call.

        The prefill `calls` run beside the decode spans, all of them shared by the threads longest first
        (a thread takes the next when it is done); their outputs come back for `_prefill` to store."""
        if fresh is None:  # views: run_decode copies them into its bound buffers, nothing changes them before
            pos, idx = self.length[:m], self.pending[:m, None]
        else:
            pos = np.where(fresh, 0, self.length[:m])
            idx = np.where(fresh, self.pad, self.pending[:m])[:, None]
        self._widest = int(pos.max()) + 1 if m else 0
        if m:
            self.kv.fit(self._widest, rows=n)
        bound = getattr(self.backend, "run_decode", None)  # IOBinding where the backend has it
        columns, kv, rows, cached, in_place = self.kv.columns, self.kv, self._rows, self._inputs, self.in_place

        def call(lo: int, hi: int) -> list[np.ndarray]:
            views = (lo, hi, columns)
            if fresh is None:  # views of the same arrays at every steady step: built once per span and width
                inputs = cached.get(views) or cached.setdefault(views, [idx[lo:hi], pos[lo:hi], *kv.past(lo, hi)])
            else:
                inputs = [idx[lo:hi], pos[lo:hi], *kv.past(lo, hi)]
            # the cache views of rows [lo, hi) at a width are always the same arrays (kv.py)
            out = bound(inputs, views) if bound else self.backend.run(inputs)
            if not in_place:  # the graph wrote its rows' new column itself
                kv.write(rows[lo:hi], inputs[1], out[1:])  # each span writes its own rows
            return out[:1]

        if not calls:
            parts, outs = self._spans.map(m, call), []
        else:  # cost in tokens: a decode row about two prefill tokens (it reads its whole cache)
            spans = self._spans.bounds(m) if m else []
            tasks = [(2 * (hi - lo), partial(call, lo, hi)) for lo, hi in spans]
            tasks += [(len(c) * max(len(self.history[r]) for r in c.tolist()), self._prefill_task(c)) for c in calls]
            order = sorted(range(len(tasks)), key=lambda i: -tasks[i][0])
            done = dict(zip(order, self._spans.each([tasks[i][1] for i in order]), strict=True))
            parts, outs = [done[i] for i in range(len(spans))], [done[i] for i in range(len(spans), len(tasks))]
        if not parts:
            return np.zeros((0, self.vocab_size), np.float32), outs
        logits = parts[0][0] if len(parts) == 1 else np.concatenate([p[0] for p in parts])
        if fresh is None:
            self.length[:m] += 1
        else:
            self.length[:m] += ~fresh
        return logits[:, 0, :], outs

    def _prefill_task(self, rows: np.ndarray) -> Callable[[], list[np.ndarray]]:
        """The graph call prefilling `rows` from position 0, right-padded to the longest (its outputs
        are stored by `_prefill`, after every call of the step)."""
        contexts = [self.history[r] for r in rows.tolist()]
        idx = np.full((len(rows), max(map(len, contexts))), self.pad, dtype=np.int64)
        for i, c in enumerate(contexts):
            idx[i, : len(c)] = c
        return partial(self.backend.run, [idx, np.zeros(len(rows), np.int64), *self.kv.empty(len(rows))])

    def _prefill(self, calls: list[np.ndarray], outs: list[list[np.ndarray]], n: int) -> np.ndarray:
        """Store the caches of each prefill call's rows (`outs`: the calls' outputs) and return the
        logits of each row's last token, rows in the order of the calls."""
        rows = np.concatenate(calls)
        others = np.delete(self.length[:n], rows)  # the rows keeping their cache (stale lengths left out)
        width = max(o[0].shape[1] for o in outs)
        self.kv.fit(max(width, int(others.max()) if others.size else 0), rows=n)
        last = []
        for call, out in zip(calls, outs, strict=True):
            lengths = np.array([len(self.history[r]) for r in call.tolist()], dtype=np.int64)
            self.kv.write(call, 0, out[1:])
            self.length[call] = lengths
            self._widest = max(self._widest, int(lengths.max()))
            last.append(out[0][np.arange(len(call)), lengths - 1])
            self._keep_scores(call, lengths, out[0])
        self.fresh[rows] = False
        return np.concatenate(last)

    def _keep_scores(self, rows: np.ndarray, lengths: np.ndarray, logits: np.ndarray) -> None:
        """The prompt logprobs asked for by rows of a prefill call (engine.logprobs turns them into scores)."""
        for i, r in enumerate(rows.tolist()):
            context = self._to_score.pop(r, None)
            if context is None:
                continue
            if len(context) <= self.block_size:  # the prompt's own logits: row j predicts context token j + 1
                self.scores[r] = (context, logits[i, : lengths[i] - 1])
            else:
                self.scores[r] = (context, self._score_blocks(context))

    def _score_blocks(self, context: list[int]) -> np.ndarray:
        """Logits predicting context[1:] of a context longer than block_size, by disjoint blocks of
        block_size (block k sees context[kB:(k+1)B]), as the evaluation scores stream data: so scoring
        a long text through the API gives the figure `training eval` and the manifest report."""
        b = self.block_size
        starts = list(range(0, len(context) - 1, b))
        idx = np.full((len(starts), b), self.pad, dtype=np.int64)
        for i, k in enumerate(starts):
            block = context[k : k + b]
            idx[i, : len(block)] = block
        per_call = max(1, PREFILL_SCRATCH_BYTES // (4 * b * b * self.n_embd))
        zeros = np.zeros(len(starts), dtype=np.int64)
        logits = np.concatenate(
            [
                self.backend.run([idx[a:c], zeros[a:c], *self.kv.empty(c - a)])[0]
                for a, c in itertools.pairwise([*range(0, len(starts), per_call), len(starts)])
            ]
        )
        return logits.reshape(-1, logits.shape[-1])[: len(context) - 1]
