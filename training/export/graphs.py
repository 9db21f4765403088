"""The exported graphs' I/O (contract/graph.py) as torch modules, plus example inputs to trace them with.

Both exporters (ONNX and TorchScript) trace these wrappers rather than the nets themselves, so the
graph signature is defined once: positional inputs `idx[, pos, *past]` -> flat tuple `(logits[, *new_kv])`
(graph contract v2, contract/graph.py).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from contract import IDX, LOGITS, POS, cache_names, family, new_kv_names, past_names, present_names
from training.export.errors import ExportError

# A loaded graph, whatever its format: positional inputs -> flat list of outputs, numpy in and out.
Runner = Callable[[Sequence[np.ndarray]], list[np.ndarray]]


class WindowGraph(nn.Module):
    """bigram / mlp / wavenet: idx [B, block_size] -> (logits [B, V],)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, idx: torch.Tensor) -> tuple[torch.Tensor]:
        logits, _ = self.net(idx)
        return (logits,)


class StepGraph(nn.Module):
    """GPT: idx [B, new], pos [B], *past -> (logits [B, new, V], *new_kv); see GPT.step."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, idx: torch.Tensor, pos: torch.Tensor, *past: torch.Tensor) -> tuple[torch.Tensor, ...]:
        logits, new_kv = self.net.step(idx, pos, list(past))
        return (logits, *new_kv)


@dataclass(frozen=True)
class GraphSpec:
    """What one exported graph looks like: its wrapper, I/O names and the shapes to trace it at."""

    module: nn.Module
    input_names: list[str]
    output_names: list[str]
    example: tuple[torch.Tensor, ...]
    is_step: bool
    vocab_size: int
    block_size: int
    n_layer: int = 0
    n_head: int = 0
    head_dim: int = 0

    @property
    def decode_io(self) -> tuple[list[str], list[str]]:
        """GPT: the decode graph's input and output names (contract/graph.py), in graph order."""
        return [IDX, POS, *cache_names(self.n_layer)], [LOGITS, *present_names(self.n_layer)]


def graph_spec(arch: str, net: nn.Module) -> GraphSpec:
    """The graph to export for `net`, which must be in eval mode (dropout off, BatchNorm running stats)."""
    if net.training:
        raise ExportError("refusing to export a model in training mode (call .eval() first)")
    cfg = net.cfg
    gen = torch.Generator().manual_seed(0)
    try:
        graph = family(arch).graph
    except ValueError as exc:
        raise ExportError(str(exc)) from None
    if graph == "window":
        # Batch 2 for tracing: torch.export specialises sizes 0 and 1, which would pin the batch.
        example = (torch.randint(0, cfg.vocab_size, (2, cfg.block_size), generator=gen),)
        return GraphSpec(
            module=WindowGraph(net).eval(),
            input_names=[IDX],
            output_names=[LOGITS],
            example=example,
            is_step=False,
            vocab_size=cfg.vocab_size,
            block_size=cfg.block_size,
        )
    if cfg.block_size < 2:
        raise ExportError("gpt block_size must be >= 2 to export a step graph with a dynamic length")
    # Trace at batch, new and past > 1 so that no dimension is specialised to 0 or 1, pairwise distinct
    # so that no two of them can be mistaken for the same symbol, and with a different pos per row.
    batch, new, past = 5, min(3, cfg.block_size), 4
    idx = torch.randint(0, cfg.vocab_size, (batch, new), generator=gen)
    pos = torch.arange(past, past - batch, -1).clamp(min=0)  # [4, 3, 2, 1, 0]
    cache = [torch.randn(t.shape, generator=gen) for t in net.empty_cache(batch, past)]
    return GraphSpec(
        module=StepGraph(net).eval(),
        input_names=[IDX, POS, *past_names(cfg.n_layer)],
        output_names=[LOGITS, *new_kv_names(cfg.n_layer)],
        example=(idx, pos, *cache),
        is_step=True,
        vocab_size=cfg.vocab_size,
        block_size=cfg.block_size,
        n_layer=cfg.n_layer,
        n_head=cfg.n_head,
        head_dim=cfg.head_dim,
    )


def eager_runner(spec: GraphSpec) -> Runner:
    """The reference: the wrapped eager module itself, without autograd."""

    def run(inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        with torch.no_grad():
            return [t.numpy() for t in spec.module(*(torch.from_numpy(np.asarray(a)) for a in inputs))]

    return run
