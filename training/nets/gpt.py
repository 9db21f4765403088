"""A nanoGPT-style decoder-only transformer, with a key/value-cache step for generation."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn


class GPTConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    vocab_size: int
    block_size: int = Field(32, ge=1)
    n_layer: int = Field(4, ge=1)
    n_head: int = Field(4, ge=1)
    n_embd: int = Field(64, ge=1)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    bias: bool = True

    @model_validator(mode="after")
    def _heads_divide(self) -> GPTConfig:
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        return self

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.n_head, self.dropout = cfg.n_head, cfg.dropout
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.resid_dropout = nn.Dropout(cfg.dropout)

    def _heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """[B, T, 3C] -> q, k, v as [B, n_head, T, head_dim]: heads become a batch dimension."""
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        return tuple(t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))

    def _merge(self, y: torch.Tensor) -> torch.Tensor:
        B, _, T, _ = y.shape
        return self.resid_dropout(self.c_proj(y.transpose(1, 2).reshape(B, T, -1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self._heads(x)
        p = self.dropout if self.training else 0.0
        return self._merge(F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True))

    def step(
        self, x: torch.Tensor, masks: tuple[torch.Tensor, torch.Tensor], past_k: torch.Tensor, past_v: torch.Tensor
    ):
        """Graph contract v2 (contract/graph.py): attend the new positions to the caller's cache and to
        each other; return only the new keys (transposed, [B, H, D, new]) and values ([B, H, new, D]).

        Scores of cache and new keys are computed apart and joined before the softmax, so the cache is
        read once and never concatenated or transposed (v1's concat was 37% of a batch-32 step). The
        new-with-new part stays a MatMul: elementwise (Mul + ReduceSum) it cost 36 us a layer instead of
        170 at batch-128 decode, but a prefill's [B, H, new, new, D] scratch made every re-prefill past
        block_size (64 tokens, all rows) a step of tens of milliseconds, and halved 256-token throughput.
        """
        past_mask, new_mask = masks  # additive: [B, 1, 1, past] and [new, new]
        q, k, v = self._heads(x)  # [B, H, new, D]
        past = past_v.shape[2]
        q = q * (1.0 / math.sqrt(q.shape[-1]))
        s_past = q @ past_k + past_mask  # [B, H, new, past]
        s_new = q @ k.transpose(-1, -2) + new_mask  # [B, H, new, new]
        p = torch.softmax(torch.cat([s_past, s_new], dim=-1), dim=-1)  # the diagonal keeps every row finite
        y = p[..., :past] @ past_v + p[..., past:] @ v
        return self._merge(y), k.transpose(-1, -2), v


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd, bias=cfg.bias)
        self.c_proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x))))


class Block(nn.Module):
    """Pre-LayerNorm residual block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))

    def step(
        self, x: torch.Tensor, masks: tuple[torch.Tensor, torch.Tensor], past_k: torch.Tensor, past_v: torch.Tensor
    ):
        a, k, v = self.attn.step(self.ln_1(x), masks, past_k, past_v)
        x = x + a
        return x + self.mlp(self.ln_2(x)), k, v


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # weight tying
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):  # residual projections: keep the stream's variance flat
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        """idx [B, T] -> logits [B, T, V] for every position (training and full-context eval)."""
        T = idx.shape[1]
        if self.cfg.block_size < T:
            raise ValueError(f"sequence length {T} exceeds block_size {self.cfg.block_size}")
        pos = torch.arange(T, device=idx.device)
        x = self.drop(self.wte(idx) + self.wpe(pos))
        for block in self.blocks:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-1)
        return logits, loss

    def step(self, idx: torch.Tensor, pos: torch.Tensor, past: list[torch.Tensor]):
        """One generation step through a caller-owned KV cache (the exported graph, contract v2).

        idx [B, new] int64, pos [B] int64 (each row's cached length), past = [k_0, v_0, k_1, v_1, ...]
        with keys [B, n_head, head_dim, past] and values [B, n_head, past, head_dim] -> logits
        [B, new, V] for every new position, and the new keys/values (same layouts, `new` long).
        """
        limit = self.cfg.block_size - 1  # padding past a row's end may run off the table: clamp it
        new, past_len = idx.shape[1], past[1].shape[2]
        positions = (pos[:, None] + torch.arange(new, device=idx.device)[None, :]).clamp(max=limit)
        x = self.wte(idx) + self.wpe(positions)
        # The masking rule, once for every layer: row b sees cache column j iff j < pos[b], new token j
        # from new token i iff j <= i (additive masks: 0 or -inf).
        hidden = torch.arange(past_len, device=idx.device)[None, :] >= pos[:, None]
        past_mask = torch.zeros(hidden.shape, device=idx.device).masked_fill(hidden, float("-inf"))[:, None, None, :]
        future = torch.ones(new, new, dtype=torch.bool, device=idx.device).triu(1)
        masks = (past_mask, torch.zeros(new, new, device=idx.device).masked_fill(future, float("-inf")))
        new_kv: list[torch.Tensor] = []
        for i, block in enumerate(self.blocks):
            x, k, v = block.step(x, masks, past[2 * i], past[2 * i + 1])
            new_kv += [k, v]
        return self.lm_head(self.ln_f(x)), new_kv

    def empty_cache(self, batch: int, length: int = 0, device: torch.device | str = "cpu") -> list[torch.Tensor]:
        """A zero cache of `length` columns per row in the contract's layouts (keys transposed)."""
        c = self.cfg
        key, value = (batch, c.n_head, c.head_dim, length), (batch, c.n_head, length, c.head_dim)
        return [torch.zeros(key if j % 2 == 0 else value, device=device) for j in range(2 * c.n_layer)]

    def generate_step(self, idx: torch.Tensor, pos: torch.Tensor, cache: list[torch.Tensor]) -> torch.Tensor:
        """Eager convenience over `step` for a cache grown by concatenation; returns logits [B, new, V]
        and appends the new entries to `cache` in place (for tests, samples and the eager benchmark)."""
        logits, new_kv = self.step(idx, pos, cache)
        for j, t in enumerate(new_kv):
            cache[j] = torch.cat([cache[j], t], dim=3 if j % 2 == 0 else 2)
        return logits
