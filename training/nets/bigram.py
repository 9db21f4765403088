"""Bigram models: the next character depends only on the current one (makemore part 1)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict
from torch import nn


class BigramConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    vocab_size: int
    block_size: int = 1


class Bigram(nn.Module):
    """A learned vocab x vocab table of logits; row = current character."""

    def __init__(self, cfg: BigramConfig):
        super().__init__()
        self.cfg = cfg
        self.table = nn.Embedding(cfg.vocab_size, cfg.vocab_size)
        nn.init.zeros_(self.table.weight)  # uniform prediction: initial loss is exactly ln(V)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        logits = self.table(idx[:, -1])
        loss = None if targets is None else F.cross_entropy(logits, targets)
        return logits, loss


def count_bigrams(sequences: list[list[int]], vocab_size: int) -> torch.Tensor:
    """Bigram counts N[a, b] over every consecutive pair of each (boundary-wrapped) sequence."""
    counts = torch.zeros(vocab_size, vocab_size, dtype=torch.float64)
    for seq in sequences:
        s = torch.tensor(seq)
        counts.index_put_((s[:-1], s[1:]), torch.ones(len(seq) - 1, dtype=torch.float64), accumulate=True)
    return counts


def fit_counts(sequences: list[list[int]], vocab_size: int, smoothing: float = 1.0) -> Bigram:
    """The closed-form bigram: log of (counts + smoothing), row-normalised, as the table's logits."""
    counts = count_bigrams(sequences, vocab_size) + smoothing
    model = Bigram(BigramConfig(vocab_size=vocab_size))
    with torch.no_grad():
        model.table.weight.copy_((counts / counts.sum(1, keepdim=True)).log().float())
    return model


def counts_nll(sequences: list[list[int]], vocab_size: int, smoothing: float = 1.0) -> float:
    """Mean NLL of the smoothed counts model over every bigram of `sequences` (2.4544 on names.txt)."""
    counts = count_bigrams(sequences, vocab_size)
    logp = ((counts + smoothing) / (counts + smoothing).sum(1, keepdim=True)).log()
    return float(-(counts * logp).sum() / counts.sum())
