"""Parity checks run at every export: an exported file must reproduce the eager model it came from.

Window models: logits at batch 1 and 7 on random contexts. GPT (graph contract v2), at batch 1 and 7,
each step against the eager full-context logits, through a cache the checker owns as the engine will:
`block_size` columns per row filled with random values, into which each step's new keys and values
are written at each row's position, so that a graph that reads past a row's position fails. Checked:
a full-block prefill; min(64, block_size) decode steps from an empty cache; a prompt then decode (the
graph given only the live prefix of the cache); a right-padded prefill of rows of different lengths;
and a batch whose rows sit at different positions, row by row against each row run alone. For every
format, eager included, a batch-1 run must match the same row of a batch-7 run (catches a model left
in training mode). Any miss raises ParityError naming the format, the shapes and the max difference.
An ONNX GPT's runner sends the one-new-token calls to its in-place decode graph (onnx.load_runner), so
the decode steps here check that graph.
"""

from __future__ import annotations

from typing import NoReturn

import numpy as np
import torch

from training.export.errors import ParityError
from training.export.graphs import GraphSpec, Runner, eager_runner

TOL = 1e-4
BATCHES = (1, 7)
DECODE_STEPS = 64


def check_parity(spec: GraphSpec, runner: Runner, fmt: str, seed: int = 0) -> None:
    """Raise ParityError unless `runner` (a loaded export) matches spec's eager module within TOL."""
    rng = np.random.default_rng(seed)
    check = _Checker(spec, runner, fmt, rng)
    for batch in BATCHES:
        seq = rng.integers(0, spec.vocab_size, (batch, spec.block_size), dtype=np.int64)
        if spec.is_step:
            n = min(DECODE_STEPS, spec.block_size)
            check.decode(seq, prefill=spec.block_size)  # the whole block in one call
            check.decode(seq[:, :n], prefill=1)  # token by token from an empty cache
            check.decode(seq[:, :n], prefill=max(1, n // 2), live_prefix=True)  # a prompt, then decode
        else:
            check.window(seq)
    if spec.is_step:
        check.mixed(rng.integers(0, spec.vocab_size, (max(BATCHES), spec.block_size), dtype=np.int64))
    check.batch_rows(rng.integers(0, spec.vocab_size, (max(BATCHES), spec.block_size), dtype=np.int64))


class _Checker:
    def __init__(self, spec: GraphSpec, runner: Runner, fmt: str, rng: np.random.Generator):
        self.spec, self.runner, self.fmt, self.rng = spec, runner, fmt, rng
        self.where = ""

    def window(self, idx: np.ndarray) -> None:
        self.where = f"idx {list(idx.shape)}"
        self._compare(self._run([idx])[0], self._full(idx), "logits")

    def decode(self, seq: np.ndarray, prefill: int, live_prefix: bool = False) -> None:
        """Feed seq[:, :prefill] in one call from an empty cache, then one token per call; check each
        step's logits. The graph gets the whole garbage-filled cache, or with live_prefix only its
        first `pos` columns (what an engine passes to read less)."""
        full = self._full(seq)  # [B, T, V]
        batch, total = seq.shape
        cache = self._cache(batch)
        past = 0
        while past < total:
            new = prefill if past == 0 else 1
            pos = np.full(batch, past, np.int64)
            width = 0 if past == 0 else (past if live_prefix else self.spec.block_size)
            logits = self._step(seq[:, past : past + new], pos, cache, width)
            self._compare(logits, full[:, past : past + new], "logits")
            past += new

    def mixed(self, seq: np.ndarray) -> None:
        """Rows of different lengths: one right-padded prefill, then steps at per-row positions, each
        row against the eager forward and against the same step run on that row alone."""
        spec, full = self.spec, self._full(seq)
        batch, block = seq.shape
        lens = np.array([1 + (r * 5) % max(1, block - 2) for r in range(batch)], np.int64)
        lens[-1] = block - 1  # its second token in the 2-token step is padding past the position table
        cache = self._cache(batch)
        self._step_rows(seq, np.zeros(batch, np.int64), lens, cache, 0, full)  # right-padded prefill
        for new in (1, 2):
            pos = lens.copy()
            real = np.minimum(new, block - pos)  # a row at block_size - 1 gets one real token, one pad
            self._step_rows(seq, pos, real, cache, spec.block_size, full)
            lens = np.minimum(pos + real, block - 1)  # a full row re-feeds its last token

    def _step_rows(
        self,
        seq: np.ndarray,
        pos: np.ndarray,
        real: np.ndarray,
        cache: list[np.ndarray],
        width: int,
        full: np.ndarray,
    ) -> None:
        """One batched call: row r feeds seq[r, pos[r]:pos[r]+real[r]], right-padded with random tokens."""
        batch = len(seq)
        new = int(real.max())
        idx = self.rng.integers(0, self.spec.vocab_size, (batch, new), dtype=np.int64)
        for r in range(batch):
            idx[r, : real[r]] = seq[r, pos[r] : pos[r] + real[r]]
        alone_caches = [[c[r : r + 1].copy() for c in cache] for r in range(batch)]
        logits = self._step(idx, pos, cache, width, real)
        for r in range(batch):
            n, p = int(real[r]), int(pos[r])
            self.where = f"row {r} of idx {list(idx.shape)}, pos {pos.tolist()}, past {width}"
            self._compare(logits[r, :n], full[r, p : p + n], "logits")
            alone = self._step(idx[r : r + 1, :n], pos[r : r + 1], alone_caches[r], width)
            self._compare(logits[r, :n], alone[0], "logits", against="the row run alone")

    def batch_rows(self, idx: np.ndarray) -> None:
        """Row r of a batch-N run equals a batch-1 run of that row, for eager and for the export."""
        for fmt, run in {"eager": eager_runner(self.spec), self.fmt: self.runner}.items():
            full = run(self._inputs(idx))[0]
            for row in (0, len(idx) - 1):
                diff = _maxdiff(run(self._inputs(idx[row : row + 1]))[0][0], full[row])
                if not diff <= TOL:
                    raise ParityError(
                        f"{fmt}: batch-1 logits differ from row {row} of idx {list(idx.shape)}: "
                        f"max abs diff {diff:.3g} > {TOL:g} (exported in training mode?)"
                    )

    def _step(
        self,
        idx: np.ndarray,
        pos: np.ndarray,
        cache: list[np.ndarray],
        width: int,
        real: np.ndarray | None = None,
    ) -> np.ndarray:
        """Run one step on cache[..., :width] and write its new entries at each row's positions, as
        the engine does (only the first real[r] of row r; the rest is padding); return the logits."""
        spec = self.spec
        batch, new = idx.shape
        self.where = f"idx {list(idx.shape)}, pos {_show(pos)}, past {width}"
        out = self._run([idx, pos, *_prefix(cache, width)])
        logits, new_kv = out[0], out[1:]
        if logits.shape != (batch, new, spec.vocab_size):
            self._fail(f"logits have shape {list(logits.shape)}, expected {[batch, new, spec.vocab_size]}")
        for j, (name, t) in enumerate(zip(spec.output_names[1:], new_kv, strict=True)):
            key = j % 2 == 0
            want = (batch, spec.n_head, spec.head_dim, new) if key else (batch, spec.n_head, new, spec.head_dim)
            if t.shape != want:
                self._fail(f"{name} has shape {list(t.shape)}, expected {list(want)}")
            for r in range(batch):
                n = new if real is None else int(real[r])
                n = min(n, spec.block_size - int(pos[r]))
                cols = slice(int(pos[r]), int(pos[r]) + n)
                if key:
                    cache[j][r, :, :, cols] = t[r, :, :, :n]
                else:
                    cache[j][r, :, cols] = t[r, :, :n]
        return logits

    def _cache(self, batch: int) -> list[np.ndarray]:
        """block_size columns per row of random values: only the columns a step wrote may matter."""
        s = self.spec
        shapes = [(batch, s.n_head, s.head_dim, s.block_size), (batch, s.n_head, s.block_size, s.head_dim)]
        return [3 * self.rng.standard_normal(shapes[j % 2]).astype(np.float32) for j in range(2 * s.n_layer)]

    def _full(self, idx: np.ndarray) -> np.ndarray:
        """The eager net's own forward: [B, V] for window nets, [B, T, V] for GPT."""
        with torch.no_grad():
            return self.spec.module.net(torch.from_numpy(idx))[0].numpy()

    def _inputs(self, idx: np.ndarray) -> list[np.ndarray]:
        if not self.spec.is_step:
            return [idx]
        return [idx, np.zeros(len(idx), np.int64), *_prefix(self._cache(len(idx)), 0)]

    def _run(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        try:
            return self.runner([np.ascontiguousarray(a) for a in inputs])
        except Exception as exc:  # an export that cannot run at these shapes fails parity too
            lines = str(exc).strip().splitlines()
            self._fail(f"failed to run: {lines[0] if lines else type(exc).__name__}")

    def _compare(self, got: np.ndarray, want: np.ndarray, name: str, against: str = "eager") -> None:
        if got.shape != want.shape or got.dtype != np.float32:
            self._fail(f"{name} is {got.dtype}{list(got.shape)}, expected float32{list(want.shape)}")
        diff = _maxdiff(got, want)
        if not diff <= TOL:  # `not <=` so that NaN fails too
            self._fail(f"{name} differ from {against}: max abs diff {diff:.3g} > {TOL:g}")

    def _fail(self, what: str) -> NoReturn:
        raise ParityError(f"{self.fmt} parity check failed at {self.where}: {what}")


def _prefix(cache: list[np.ndarray], width: int) -> list[np.ndarray]:
    """The first `width` columns of each layer's keys (last axis) and values (axis 2)."""
    return [c[..., :width] if j % 2 == 0 else c[:, :, :width] for j, c in enumerate(cache)]


def _show(pos: np.ndarray) -> str:
    """Per-row positions, shortened when they are all the same."""
    values = pos.tolist()
    return f"[{values[0]}]*{len(values)}" if len(set(values)) == 1 and len(values) > 1 else str(values)


def _maxdiff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max())
