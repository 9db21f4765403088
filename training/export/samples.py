"""Samples for the model card, drawn from the eager PyTorch model of the checkpoint (not the exports).

All samples are drawn in one batch, at temperature 1 with a fixed seed, from the full-context
forward (no cache), so they show what the trained weights do independent of any exported graph.
"""

from __future__ import annotations

import torch
from torch import nn

from training.nets import WINDOW_ARCHS

LINE_MAX_CHARS = 200  # a `lines` sample that has not ended by then is cut (and marked with "…")
STREAM_CHARS = 200


def draw_samples(
    net: nn.Module, arch: str, vocab: list[str], boundary_token: int | None, n: int = 10, seed: int = 1337
) -> list[str]:
    """`lines` models: boundary -> ... -> boundary, one item each. `stream`: ~200 chars after a newline."""
    lines = boundary_token is not None
    newline = vocab.index("\n") if "\n" in vocab else 0
    start = boundary_token if lines else newline
    block = net.cfg.block_size
    # Window nets see a full window from the start (makemore pads with the start token); GPT grows one.
    width = block if arch in WINDOW_ARCHS else 1
    tokens = torch.full((n, width), start, dtype=torch.long)
    done = torch.zeros(n, dtype=torch.bool)
    gen = torch.Generator().manual_seed(seed)
    steps = LINE_MAX_CHARS + 1 if lines else STREAM_CHARS
    with torch.no_grad():
        for _ in range(steps):
            logits = net(tokens[:, -block:])[0]
            logits = logits if logits.dim() == 2 else logits[:, -1]
            nxt = torch.multinomial(torch.softmax(logits.double(), dim=-1), 1, generator=gen)
            tokens = torch.cat([tokens, nxt], dim=1)
            if lines:
                done |= nxt[:, 0] == boundary_token
                if bool(done.all()):
                    break
    return [_decode(row[width:].tolist(), vocab, boundary_token) for row in tokens]


def _decode(ids: list[int], vocab: list[str], boundary_token: int | None) -> str:
    if boundary_token is None:
        return "".join(vocab[i] for i in ids)
    if boundary_token in ids:
        return "".join(vocab[i] for i in ids[: ids.index(boundary_token)])
    return "".join(vocab[i] for i in ids[:LINE_MAX_CHARS]) + "…"
