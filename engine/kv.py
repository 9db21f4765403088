"""The engine-owned KV cache of a GPT: one preallocated block per slot, read in place by the graph.

Layout (contract/graph.py): values [slots, n_head, columns, head_dim]; keys transposed, [slots, n_head,
head_dim, columns], for the step graph's decode (contract v2), or laid out like the values for a decode
graph that updates the cache in place (`in_place`: the graph writes each step's new column itself, and
`write` only stores what the step graph's prefills add).

Live sequences always sit in rows 0..n-1 (the engine compacts on exit), so the rows a call
reads, `[lo:hi]`, are one contiguous block that ONNX Runtime and torch take without a copy.

`columns` is the live prefix, not block_size: the step graph's attention reads every column it is
given, and the decode graph's kernel, which reads each row only to its length, still costs more the
wider the buffer is than its rows (docs/benchmarks.md, "The cache's width"). So the cache is kept only
as wide as the longest live sequence, rounded up to `BUCKET` columns (narrower buckets cost the served
shape more re-layouts than they save). The memory for block_size columns is allocated (and touched)
once at load; changing `columns` re-lays the live rows out in place, once per bucket crossed.

The arrays live where the backend computes (engine/arrays.py): numpy in host memory, or torch tensors
on a device, so a GPU's cache never crosses the bus; a graph's outputs are brought to them by `take`.
"""

from __future__ import annotations

import numpy as np

from contract import cache_shape, key_shape, value_shape
from engine.arrays import HOST, HostArrays, TorchArrays

BUCKET = 32
FEW_ROWS = 4  # decode writes of up to this many rows go row by row


class KVCache:
    def __init__(
        self,
        slots: int,
        n_layer: int,
        n_head: int,
        head_dim: int,
        block_size: int,
        in_place: bool = False,
        arrays: HostArrays | TorchArrays = HOST,
    ):
        self.slots, self.n_layer, self.n_head, self.head_dim = slots, n_layer, n_head, head_dim
        self.block_size, self.in_place, self.arrays = block_size, in_place, arrays
        self._flat = [arrays.zeros(slots * n_head * head_dim * block_size) for _ in range(2 * n_layer)]
        self.columns = min(BUCKET, block_size)
        self.layers = self._views(self.columns)

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self._flat)

    def bytes_per_slot(self, columns: int | None = None) -> int:
        """float32 keys and values of one sequence at `columns` (default block_size) positions."""
        return 4 * 2 * self.n_layer * self.n_head * self.head_dim * (columns or self.block_size)

    def fit(self, needed: int, rows: int) -> None:
        """Make room for `needed` columns (keeping rows [0, rows)), or give back room no longer needed."""
        target = min(self.block_size, -(-max(needed, 1) // BUCKET) * BUCKET)
        if target > self.columns or target + BUCKET < self.columns:
            self._relayout(target, rows)

    def past(self, lo: int, hi: int) -> list[np.ndarray]:
        """Rows [lo, hi) of every layer, all `columns` wide: contiguous views, no copy."""
        return [a[lo:hi] for a in self.layers]

    def empty(self, rows: int) -> list[np.ndarray]:
        """A zero-column cache for a prefill from position 0 (host arrays: there is nothing in them)."""
        h, d = self.n_head, self.head_dim
        k, v = np.empty(key_shape(rows, h, d, 0), np.float32), np.empty(value_shape(rows, h, d, 0), np.float32)
        return [k, v] * self.n_layer

    def write(self, rows: np.ndarray, start: np.ndarray | int, new_kv: list[np.ndarray]) -> None:
        """Store what a step added: row rows[b] gets its new entries at columns start[b] .. start[b]+new-1.

        A prefill (start 0 for all) writes its whole width, padding included: columns past a row's
        length are masked by the graph and overwritten as the row grows. `new_kv` is in the step graph's
        layout (keys transposed), which an in-place cache turns back. In a step-graph decode, the keys'
        transposed layout makes every new key a scattered write, one reason the in-place decode graph
        wins (docs/benchmarks.md).
        """
        kt = not self.in_place  # keys transposed (the step graph's layout; its new_kv always is)
        new_kv = [self.arrays.take(t) for t in new_kv]
        if isinstance(start, int):
            new, rows = new_kv[1].shape[2], self.arrays.index(rows)
            for j, t in enumerate(new_kv):
                if j % 2 == 0 and kt:
                    self.layers[j][rows, :, :, start : start + new] = t
                else:
                    self.layers[j][rows, :, start : start + new, :] = t if j % 2 else t.swapaxes(2, 3)
            return
        if len(rows) <= FEW_ROWS and self.arrays is HOST:  # plain slices: numpy's fancy indexing costs more
            # per call than per row (torch's indexing costs per call, and on a GPU per kernel launch)
            for b, (r, p) in enumerate(zip(rows.tolist(), start.tolist(), strict=True)):
                for j, t in enumerate(new_kv):
                    if j % 2 == 0 and kt:
                        self.layers[j][r, :, :, p] = t[b, :, :, 0]
                    else:
                        self.layers[j][r, :, p, :] = t[b, :, 0, :] if j % 2 else t[b, :, :, 0]
            return
        rows, start = self.arrays.index(rows), self.arrays.index(start)
        for j, t in enumerate(new_kv):
            if j % 2 == 0 and kt:
                self.layers[j][rows, :, :, start] = t[:, :, :, 0]
            else:
                self.layers[j][rows, :, start, :] = t[:, :, 0, :] if j % 2 else t[:, :, :, 0]

    def move(self, src: int, dst: int) -> None:
        for a in self.layers:
            a[dst] = a[src]

    def _views(self, columns: int) -> list[np.ndarray]:
        h, d, s = self.n_head, self.head_dim, self.slots
        size = s * h * d * columns
        keys = cache_shape(s, h, d, columns) if self.in_place else key_shape(s, h, d, columns)
        values = value_shape(s, h, d, columns)
        return [f[:size].reshape(keys if j % 2 == 0 else values) for j, f in enumerate(self._flat)]

    def _relayout(self, columns: int, rows: int) -> None:
        """Re-lay rows [0, rows) out at `columns` wide, in the same memory: each layer's live block is
        copied out whole, then written back at the new width (two bulk copies a layer, where a row at a
        time cost a call per row and layer; old and new places overlap, which is why the copy)."""
        keep = min(columns, self.columns)
        old, new = self.layers, self._views(columns)
        for j in range(2 * self.n_layer):
            if j % 2 == 0 and not self.in_place:
                new[j][:rows, :, :, :keep] = self.arrays.copy(old[j][:rows, :, :, :keep])
            else:
                new[j][:rows, :, :keep, :] = self.arrays.copy(old[j][:rows, :, :keep, :])
        self.layers, self.columns = new, columns
