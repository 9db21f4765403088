"""Eager PyTorch sampling from a checkpoint (the offline path; the service has its own engine)."""

from __future__ import annotations

import torch
from torch import nn

from training.checkpoint import CheckpointMeta

LINES_MAX_NEW = 64
STREAM_MAX_NEW = 200


@torch.no_grad()
def sample_texts(
    model: nn.Module,
    meta: CheckpointMeta,
    n: int,
    prompt: str = "",
    temperature: float = 1.0,
    seed: int | None = None,
    max_new_tokens: int | None = None,
    device: str = "cpu",
) -> list[str]:
    """n samples: `lines` models from the boundary token + prompt to the next boundary,
    `stream` models max_new_tokens characters after the prompt (a newline if none). Text includes the prompt.
    """
    lookup = {ch: i for i, ch in enumerate(meta.vocab)}
    unknown = sorted({ch for ch in prompt if ch not in lookup})
    if meta.boundary_token is not None and meta.vocab[meta.boundary_token] in prompt:
        unknown.append(meta.vocab[meta.boundary_token])
    if unknown:
        raise ValueError(f"prompt has characters outside the vocabulary: {', '.join(map(repr, unknown))}")
    if temperature < 0:
        raise ValueError("temperature must be >= 0")
    gen = torch.Generator(device=device)
    if seed is not None:
        gen.manual_seed(seed)
    block = model.cfg.block_size
    lines = meta.boundary_token is not None
    limit = max_new_tokens or (LINES_MAX_NEW if lines else STREAM_MAX_NEW)
    start = ([meta.boundary_token] if lines else []) + [lookup[ch] for ch in prompt]
    if not start:
        start = [lookup.get("\n", 0)]
    if lines and meta.arch != "gpt":
        start = [meta.boundary_token] * (block - 1) + start  # makemore pads the window with boundaries
    seq = torch.tensor([start] * n, device=device)
    done = torch.zeros(n, dtype=torch.bool, device=device)
    new: list[torch.Tensor] = []
    model.eval()
    for _ in range(limit):
        ctx = seq[:, -block:]
        if meta.arch != "gpt" and ctx.shape[1] < block:
            pad = torch.full((n, block - ctx.shape[1]), start[0], device=device)
            ctx = torch.cat([pad, ctx], dim=1)
        logits, _ = model(ctx)
        logits = logits[:, -1, :] if logits.dim() == 3 else logits
        if temperature == 0:
            nxt = logits.argmax(-1, keepdim=True)
        else:
            probs = torch.softmax(logits / temperature, dim=-1)
            nxt = torch.multinomial(probs, 1, generator=gen)
        seq = torch.cat([seq, nxt], dim=1)
        new.append(nxt[:, 0])
        if lines:
            done |= nxt[:, 0] == meta.boundary_token
            if bool(done.all()):
                break
    texts = []
    generated = torch.stack(new, dim=1).tolist() if new else [[] for _ in range(n)]
    for row in generated:
        if lines and meta.boundary_token in row:
            row = row[: row.index(meta.boundary_token)]
        texts.append(prompt + "".join(meta.vocab[i] for i in row))
    return texts
