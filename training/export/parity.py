"""Parity checks run at every export: an exported file must reproduce the eager model it came from.

Window models: logits at batch 1 and 7 on random contexts. GPT, at batch 1 and 7: a full-block
prefill, min(64, block_size) steps of decode through the exported cache from an empty cache, and a
multi-token prefill followed by decode, each step against the eager full-context logits. For every
format, eager included, a batch-1 run must match the same row of a batch-7 run (catches a model left
in training mode). Any miss raises ParityError naming the format, the shapes and the max difference.
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
    check = _Checker(spec, runner, fmt)
    for batch in BATCHES:
        seq = rng.integers(0, spec.vocab_size, (batch, spec.block_size), dtype=np.int64)
        if spec.is_step:
            n = min(DECODE_STEPS, spec.block_size)
            check.decode(seq, prefill=spec.block_size)  # the whole block in one call
            check.decode(seq[:, :n], prefill=1)  # token by token from an empty cache
            check.decode(seq[:, :n], prefill=max(1, n // 2))  # a prompt, then token by token
        else:
            check.window(seq)
    check.batch_rows(rng.integers(0, spec.vocab_size, (max(BATCHES), spec.block_size), dtype=np.int64))


class _Checker:
    def __init__(self, spec: GraphSpec, runner: Runner, fmt: str):
        self.spec, self.runner, self.fmt = spec, runner, fmt
        self.where = ""

    def window(self, idx: np.ndarray) -> None:
        self.where = f"idx {list(idx.shape)}"
        self._compare(self._run([idx])[0], self._full(idx), "logits")

    def decode(self, seq: np.ndarray, prefill: int) -> None:
        """Feed seq[:, :prefill] in one call, then one token per call; check every step's outputs."""
        spec, full = self.spec, self._full(seq)  # [B, T, V]
        batch, total = seq.shape
        cache = [self._empty(batch)] * (2 * spec.n_layer)
        past = 0
        while past < total:
            idx = seq[:, past : past + (prefill if past == 0 else 1)]
            self.where = f"idx {list(idx.shape)}, past {past}"
            out = self._run([idx, np.array([past], np.int64), *cache])
            self._compare(out[0], full[:, past + idx.shape[1] - 1], "logits")
            past += idx.shape[1]
            for name, present in zip(spec.output_names[1:], out[1:], strict=True):
                if present.shape != (batch, spec.n_head, past, spec.head_dim):
                    self._fail(f"{name} has shape {list(present.shape)}, expected past+new = {past}")
            cache = out[1:]

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

    def _full(self, idx: np.ndarray) -> np.ndarray:
        """The eager net's own forward: [B, V] for window nets, [B, T, V] for GPT."""
        with torch.no_grad():
            return self.spec.module.net(torch.from_numpy(idx))[0].numpy()

    def _empty(self, batch: int) -> np.ndarray:
        return np.zeros((batch, self.spec.n_head, 0, self.spec.head_dim), np.float32)

    def _inputs(self, idx: np.ndarray) -> list[np.ndarray]:
        if not self.spec.is_step:
            return [idx]
        return [idx, np.zeros(1, np.int64), *[self._empty(len(idx))] * (2 * self.spec.n_layer)]

    def _run(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        try:
            return self.runner(inputs)
        except Exception as exc:  # an export that cannot run at these shapes fails parity too
            lines = str(exc).strip().splitlines()
            self._fail(f"failed to run: {lines[0] if lines else type(exc).__name__}")

    def _compare(self, got: np.ndarray, want: np.ndarray, name: str) -> None:
        if got.shape != want.shape or got.dtype != np.float32:
            self._fail(f"{name} is {got.dtype}{list(got.shape)}, expected float32{list(want.shape)}")
        diff = _maxdiff(got, want)
        if not diff <= TOL:  # `not <=` so that NaN fails too
            self._fail(f"{name} differ from eager: max abs diff {diff:.3g} > {TOL:g}")

    def _fail(self, what: str) -> NoReturn:
        raise ParityError(f"{self.fmt} parity check failed at {self.where}: {what}")


def _maxdiff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max())
