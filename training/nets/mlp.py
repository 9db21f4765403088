"""The Bengio et al. (2003) MLP language model, with makemore's initialisation fixes (parts 2-3)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn


class MLPConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    vocab_size: int
    block_size: int = Field(3, ge=1)
    n_embd: int = Field(10, ge=1)
    n_hidden: int = Field(200, ge=1)
    batchnorm: bool = True


class MLP(nn.Module):
    """Embed each context character, concatenate, one tanh hidden layer, logits."""

    def __init__(self, cfg: MLPConfig):
        super().__init__()
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        fan_in = cfg.block_size * cfg.n_embd
        # A bias before BatchNorm is subtracted right away: leave it out.
        self.hidden = nn.Linear(fan_in, cfg.n_hidden, bias=not cfg.batchnorm)
        self.norm = nn.BatchNorm1d(cfg.n_hidden) if cfg.batchnorm else nn.Identity()
        self.head = nn.Linear(cfg.n_hidden, cfg.vocab_size)
        with torch.no_grad():
            # Kaiming for tanh (gain 5/3) keeps pre-activations near unit scale: tanh does not saturate.
            nn.init.normal_(self.hidden.weight, std=(5 / 3) / math.sqrt(fan_in))
            # Near-zero logits: the first loss is ln(vocab_size), not confidently wrong.
            self.head.weight.mul_(0.01)
            self.head.bias.zero_()

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        x = self.wte(idx).flatten(1)
        x = torch.tanh(self.norm(self.hidden(x)))
        logits = self.head(x)
        loss = None if targets is None else F.cross_entropy(logits, targets)
        return logits, loss
