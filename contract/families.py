"""The model families, as data: what each architecture's exported graph is, said once.

Everything that treats architectures differently asks `family(arch)` here instead of comparing names:
the manifest's checks, the engine's runner and backend I/O, training's tasks, export and model cards.
A new window architecture is an entry here (graph "window") plus its net (training/nets/); a new
architecture with a KV cache would be an entry with graph "kv_step" and the step-graph contract.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

GraphKind = Literal["window", "kv_step"]


@dataclass(frozen=True)
class Family:
    """`window`: idx [batch, block_size] -> logits [batch, vocab], the last block_size tokens each call;
    `kv_step`: the graph contract's step graph (every row at its own position over a caller-owned KV
    cache, contract/graph.py), whose manifest carries n_layer, n_head and head_dim."""

    arch: str
    graph: GraphKind
    course: str  # where "Neural Networks: Zero to Hero" builds it

    @property
    def kv_cache(self) -> bool:
        return self.graph == "kv_step"


FAMILIES: dict[str, Family] = {
    f.arch: f
    for f in (
        Family("bigram", "window", "makemore part 1"),
        Family("mlp", "window", "makemore part 2 (Bengio et al. 2003)"),
        Family("wavenet", "window", "makemore part 5"),
        Family("gpt", "kv_step", "Let's build GPT"),
    )
}
ARCHS: tuple[str, ...] = tuple(FAMILIES)
Arch = Literal[ARCHS]  # type: ignore[valid-type]  # the names above, for pydantic fields


def family(arch: str) -> Family:
    try:
        return FAMILIES[arch]
    except KeyError:
        raise ValueError(f"unknown architecture {arch!r}; known: {', '.join(ARCHS)}") from None
