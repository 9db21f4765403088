"""The hierarchical "WaveNet" of makemore part 5: fuse pairs of characters, then pairs of pairs, ..."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn


class WaveNetConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    vocab_size: int
    block_size: int = Field(8, ge=2)
    n_embd: int = Field(24, ge=1)
    n_hidden: int = Field(128, ge=1)

    @model_validator(mode="after")
    def _power_of_two(self) -> WaveNetConfig:
        if self.block_size & (self.block_size - 1):
            raise ValueError("wavenet block_size must be a power of two (it is halved at every level)")
        return self


class FlattenConsecutive(nn.Module):
    """[B, T, C] -> [B, T/n, C*n]: concatenate n neighbouring positions; drop T when it reaches 1."""

    def __init__(self, n: int):
        super().__init__()
        self.n = n

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        x = x.reshape(B, T // self.n, C * self.n)
        return x.squeeze(1) if x.shape[1] == 1 else x


class BatchNorm(nn.BatchNorm1d):
    """BatchNorm over the batch and, for [B, T, C] input, the time dimension too (dims 0 and 1)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 3:
            return super().forward(x.transpose(1, 2)).transpose(1, 2)
        return super().forward(x)


class WaveNet(nn.Module):
    def __init__(self, cfg: WaveNetConfig):
        super().__init__()
        self.cfg = cfg
        levels = cfg.block_size.bit_length() - 1
        layers: list[nn.Module] = [nn.Embedding(cfg.vocab_size, cfg.n_embd)]
        width = cfg.n_embd
        for _ in range(levels):
            layers += [
                FlattenConsecutive(2),
                nn.Linear(width * 2, cfg.n_hidden, bias=False),
                BatchNorm(cfg.n_hidden),
                nn.Tanh(),
            ]
            width = cfg.n_hidden
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(cfg.n_hidden, cfg.vocab_size)
        with torch.no_grad():
            for layer in self.body:
                if isinstance(layer, nn.Linear):
                    nn.init.normal_(layer.weight, std=(5 / 3) / layer.in_features**0.5)
            self.head.weight.mul_(0.1)  # the course's fix for a confidently wrong first softmax
            self.head.bias.zero_()

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        logits = self.head(self.body(idx))
        loss = None if targets is None else F.cross_entropy(logits, targets)
        return logits, loss
