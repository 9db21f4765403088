"""What the hardware allows: the fp32 sgemm rate, and the FLOPs one generated token costs.

Tokens/s alone cannot say how far an engine is from the machine; utilisation = tokens/s x FLOP per
token / the sgemm rate measured in the same run, with the same thread count, can.
"""

from __future__ import annotations

import time
from typing import Any


def flop_per_token(n_layer: int, n_embd: int, vocab_size: int, context: int) -> int:
    """Forward FLOPs of one decoded token (a multiply-add counts 2), written once for every row:

        2 x (non-embedding params + vocab x n_embd)   every weight once, the tied head included
      + 4 x n_layer x context x n_embd                 attention: q.K^T and p.V over `context` keys

    Non-embedding params per layer: 12 n_embd^2 + 13 n_embd (qkv, proj, mlp, two LayerNorms, biases),
    plus the final LayerNorm. The engine benchmark passes context = block_size (the upper bound: the
    context slides between block_size / 2 and block_size). shakespeare-gpt: 2.79 MFLOP.
    """
    non_embedding = n_layer * (12 * n_embd * n_embd + 13 * n_embd) + 2 * n_embd
    return 2 * (non_embedding + vocab_size * n_embd) + 4 * n_layer * context * n_embd


def sgemm_ceiling(threads: int, size: int = 2048, repeats: int = 5) -> dict[str, Any]:
    """Best GFLOP/s of torch's fp32 matmul of two size x size matrices with `threads` threads.

    Best, not median: it is a ceiling, and a busy neighbour only ever makes a run slower.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        gen = torch.Generator().manual_seed(0)
        a = torch.randn(size, size, generator=gen)
        b = torch.randn(size, size, generator=gen)
        out = torch.empty(size, size)
        torch.matmul(a, b, out=out)  # warm-up: first-call allocations
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            torch.matmul(a, b, out=out)
            best = min(best, time.perf_counter() - t0)
    finally:
        torch.set_num_threads(before)
    gflops = 2 * size**3 / best / 1e9
    return {"threads": threads, "size": size, "gflops": round(gflops, 1), "best_s": round(best, 4)}


def utilisation(tokens_per_s: float, flop: int, gflops: float) -> float:
    """Fraction of the sgemm ceiling a tokens/s figure uses."""
    return tokens_per_s * flop / (gflops * 1e9) if gflops else 0.0
