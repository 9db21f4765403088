"""REFERENCE ONLY: the v1 engine (graph contract v1, frozen batches), kept to measure engine v2 against.

v1's code and model files are being replaced; this module rebuilds what v1 did from the same weights, so
the continuous-arrival scenario (benchmarks.arrivals) can compare both in one run:
- `V1Step`: v1's step graph: one `pos [1]` for the whole batch, no mask between rows, and the cache
  returned as `concat(past, new)` (keys [B, H, past, D], not transposed), logits of the last position;
- `export_v1` (benchmarks/v1_export.py): that graph as ONNX, exported as v1 was (dynamo, opset 18, one file);
- `V1Decoder`: a copy of v1's `GPTDecoder` grouping (git show d86df0e:engine/decoders.py):
  rows at different cache lengths cannot share a call, so groups decode apart and merge when they meet;
- `V1Worker`: the old worker's loop (service/api.py BatchLoop): a batch is frozen when it starts, at most
  two batches run interleaved, new requests are taken at most every 10 ms and only into a new batch.
Not used by the service, and not a test oracle.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

INTAKE_S = 0.01  # v1 BatchLoop: while busy, look for new requests this often
MAX_ACTIVE_BATCHES = 2  # v1 BatchLoop: at most two frozen batches interleaved
BATCH_TIMEOUT_S = 0.005  # v1 default batch_timeout: an idle worker gathers this long


class V1Session:
    """ONNX Runtime over the v1 graph, with v1's session options."""

    def __init__(self, path: Path, net: Any, threads: int):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        self.session = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
        self.inputs = [i.name for i in self.session.get_inputs()]
        c = net.cfg
        self.n_layer, self.n_head, self.head_dim, self.block_size = c.n_layer, c.n_head, c.head_dim, c.block_size

    def empty(self, n: int) -> list[np.ndarray]:
        return [np.zeros((n, self.n_head, 0, self.head_dim), dtype=np.float32)] * (2 * self.n_layer)

    def call(self, idx: np.ndarray, pos: int, cache: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        out = self.session.run(
            None, dict(zip(self.inputs, [idx, np.array([pos], dtype=np.int64), *cache], strict=True))
        )
        return out[0], out[1:]


@dataclass
class V1Request:
    """One sequence of a v1 batch: its context and stop rule (lines models end at the boundary)."""

    rid: Any
    context: list[int]
    max_new: int
    boundary: int | None
    rng: np.random.Generator
    n_tokens: int = 0
    done: bool = False


def _sample(reqs: list[V1Request], logits: np.ndarray) -> np.ndarray:
    """Temperature-1 sampling, one uniform per row from the row's own RNG (as v1's Sampler)."""
    x = logits.astype(np.float64)
    x -= x.max(axis=1, keepdims=True)
    p = np.exp(x)
    cdf = np.cumsum(p, axis=1)
    u = np.array([r.rng.random() for r in reqs]) * cdf[:, -1]
    return np.minimum((cdf < u[:, None]).sum(axis=1), logits.shape[1] - 1)


@dataclass
class _Group:
    rows: np.ndarray
    cache: list[np.ndarray]
    length: int
    next_tokens: np.ndarray


def v1_decode(session: V1Session, reqs: list[V1Request]) -> Iterator[list[tuple[Any, int, bool]]]:
    """v1's GPTDecoder.run over one model's frozen batch; per model call, (rid, token, finished) events."""
    block, keep = session.block_size, max(1, session.block_size // 2)
    history = [r.context[-block:] for r in reqs]
    groups: dict[int, _Group] = {}

    def advance(rows: np.ndarray, logits: np.ndarray) -> tuple[np.ndarray, np.ndarray, list]:
        batch = [reqs[r] for r in rows.tolist()]
        tokens = _sample(batch, logits)
        alive = np.ones(len(rows), dtype=bool)
        events = []
        for j, (req, t) in enumerate(zip(batch, tokens.tolist(), strict=True)):
            req.n_tokens += 1
            req.done = t == req.boundary or req.n_tokens >= req.max_new
            alive[j] = not req.done
            events.append((req.rid, req.n_tokens, req.done))
        return tokens, alive, events

    def settle(group: _Group, tokens: np.ndarray, alive: np.ndarray, cache: list[np.ndarray], length: int) -> None:
        if not alive.all():
            group.rows, tokens = group.rows[alive], tokens[alive]
            cache = [c[alive] for c in cache]
        if not group.rows.size:
            return
        for r, t in zip(group.rows.tolist(), tokens.tolist(), strict=True):
            history[r].append(t)
            if len(history[r]) > 2 * block:
                del history[r][:-block]
        other = groups.pop(length, None)
        if other is not None:  # caught up with another group: merge
            rows = np.concatenate([other.rows, group.rows])
            cache = [np.concatenate(pair, axis=0) for pair in zip(other.cache, cache, strict=True)]
            groups[length] = _Group(rows, cache, length, np.concatenate([other.next_tokens, tokens]))
        else:
            groups[length] = _Group(group.rows, cache, length, tokens)

    by_length: dict[int, list[int]] = {}
    for r, h in enumerate(history):
        by_length.setdefault(len(h), []).append(r)
    for length in sorted(by_length):  # each distinct prompt length is prefilled on its own
        rows = np.array(by_length[length], dtype=np.int64)
        logits, cache = session.call(np.array([history[r] for r in rows], dtype=np.int64), 0, session.empty(len(rows)))
        tokens, alive, events = advance(rows, logits)
        yield events
        settle(_Group(rows, [], length, tokens), tokens, alive, cache, length)
    while groups:  # the shortest group decodes alone until it meets the next
        length = min(groups)
        group = groups.pop(length)
        if length >= block:  # full: restart from the last `keep` tokens
            idx = np.array([history[r][-keep:] for r in group.rows.tolist()], dtype=np.int64)
            logits, cache = session.call(idx, 0, session.empty(len(group.rows)))
            length = keep
        else:
            logits, cache = session.call(group.next_tokens[:, None], length, group.cache)
            length += 1
        tokens, alive, events = advance(group.rows, logits)
        yield events
        settle(group, tokens, alive, cache, length)


@dataclass
class _Batch:
    runs: list[Iterator[list]]  # one v1_decode per model in the batch, stepped round robin
    reqs: list[V1Request]
    turn: int = 0


@dataclass
class V1Worker:
    """v1's BatchLoop over v1_decode: frozen batches, at most two interleaved, intake every 10 ms."""

    sessions: dict[str, V1Session]
    max_batch: int = 32
    idle_gather_s: float = BATCH_TIMEOUT_S
    batches: list[_Batch] = field(default_factory=list)
    step_s: list[float] = field(default_factory=list)
    last_intake: float = -1.0

    def busy(self) -> bool:
        return bool(self.batches)

    def running(self) -> int:
        return sum(1 for b in self.batches for r in b.reqs if not r.done)

    def can_start(self) -> bool:
        """Room for a new batch: fewer than two running, and fewer than max_batch sequences in them."""
        return len(self.batches) < MAX_ACTIVE_BATCHES and self.running() < self.max_batch

    def admit(self, pending: list[tuple[str, V1Request]], now: float) -> list[Any]:
        """Start a new batch of what is queued, when v1 would; the request ids taken."""
        if not pending or not self.can_start():
            return []
        running = self.running()
        if self.batches and now - self.last_intake < INTAKE_S:
            return []
        self.last_intake = now
        take, pending[:] = pending[: self.max_batch - running], pending[self.max_batch - running :]
        by_model: dict[str, list[V1Request]] = {}
        for model, req in take:
            by_model.setdefault(model, []).append(req)
        runs = [v1_decode(self.sessions[m], rs) for m, rs in by_model.items()]
        self.batches.append(_Batch(runs, [req for _, req in take]))
        return [req.rid for _, req in take]

    def step(self) -> list[tuple[Any, int, bool]]:
        """One model call of every active batch (round robin over its models), as v1's loop did."""
        events: list[tuple[Any, int, bool]] = []
        for batch in list(self.batches):
            while batch.runs:
                batch.turn %= len(batch.runs)
                t0 = time.perf_counter()
                try:
                    events += next(batch.runs[batch.turn])
                except StopIteration:
                    batch.runs.pop(batch.turn)
                    continue
                self.step_s.append(time.perf_counter() - t0)
                batch.turn += 1
                break
            if not batch.runs:
                self.batches.remove(batch)
        return events
