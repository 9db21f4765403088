"""The nets of the model families (contract/families.py), each a plain nn.Module in its own file, built by
name from a config dict."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ValidationError
from torch import nn

from training.nets.bigram import Bigram, BigramConfig
from training.nets.gpt import GPT, GPTConfig
from training.nets.mlp import MLP, MLPConfig
from training.nets.wavenet import WaveNet, WaveNetConfig

FAMILIES: dict[str, tuple[type[BaseModel], type[nn.Module]]] = {
    "bigram": (BigramConfig, Bigram),
    "mlp": (MLPConfig, MLP),
    "wavenet": (WaveNetConfig, WaveNet),
    "gpt": (GPTConfig, GPT),
}


def build(arch: str, config: dict[str, Any]) -> nn.Module:
    """Validate `config` against the family's pydantic model and instantiate the net."""
    if arch not in FAMILIES:
        raise ValueError(f"unknown architecture {arch!r}; known: {', '.join(FAMILIES)}")
    config_cls, net_cls = FAMILIES[arch]
    try:
        cfg = config_cls.model_validate(config)
    except ValidationError as exc:  # one line naming the key, not pydantic's multi-line report
        first = exc.errors()[0]
        where = "".join(f"{p}: " for p in first["loc"][:1])  # the key, when the error is about one
        raise ValueError(f"{arch} model config: {where}{first['msg'].removeprefix('Value error, ')}") from None
    return net_cls(cfg)


def n_params(model: nn.Module) -> int:
    """Distinct parameters (tied weights counted once)."""
    return sum(p.numel() for p in model.parameters())
