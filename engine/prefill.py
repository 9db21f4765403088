"""How a step's fresh rows are grouped into prefill calls: each call is right-padded to its longest row, so
rows of similar prompt lengths share a call and the padding (which costs as much as a token) stays small."""

from __future__ import annotations

import numpy as np

# A prefill call's attention among its new tokens is elementwise (training/nets/gpt.py): its scratch is
# rows x new^2 x n_embd floats, so long prompts are prefilled a few rows per call.
PREFILL_SCRATCH_BYTES = 64 << 20
# Padding a prefill call may carry beyond a quarter of its tokens: about what one more call costs.
PAD_SLACK = 8


def prefill_calls(lengths: np.ndarray, n_embd: int) -> list[np.ndarray]:
    """Split prompts of these lengths into prefill calls of similar lengths (indices into `lengths`):
    each call is right-padded to its longest row, so rows join a call while its padding stays within a
    quarter of its tokens plus PAD_SLACK (a call's own cost, in tokens) and its attention scratch within
    PREFILL_SCRATCH_BYTES."""
    order = np.argsort(lengths, kind="stable")
    calls: list[list[int]] = []
    tokens = 0
    for i in order.tolist():
        width = int(lengths[i])
        if calls:
            rows = len(calls[-1]) + 1
            padded, real = rows * width, tokens + width
            if padded - real <= real // 4 + PAD_SLACK and rows * width * width * n_embd * 4 <= PREFILL_SCRATCH_BYTES:
                calls[-1].append(i)
                tokens = real
                continue
        calls.append([i])
        tokens = width
    return [np.array(c, dtype=np.int64) for c in calls]
