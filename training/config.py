"""Training configs: TOML files validated by one pydantic model; `--set key=value` overrides."""

from __future__ import annotations

import copy
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from contract import Arch, family
from training.nets import FAMILIES

CONFIG_DIR = Path(__file__).parent / "configs"


class ConfigError(ValueError):
    """A config that cannot be used, with a one-line reason naming the key."""


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    dataset: str | None = Field(None, description="built-in dataset: names or shakespeare")
    data: str | None = Field(None, description="path to a text file instead of a built-in dataset")
    format: Literal["lines", "stream"] | None = None
    split_seed: int = 42
    arch: Arch
    model: dict[str, Any] = Field(default_factory=dict, description="the net's hyperparameters")

    batch_size: int = Field(32, ge=1)
    max_iters: int = Field(5000, ge=1)
    learning_rate: float = Field(1e-3, gt=0)
    min_lr: float = Field(1e-4, ge=0)
    warmup_iters: int = Field(100, ge=0)
    lr_decay_iters: int | None = Field(None, ge=1, description="defaults to max_iters")
    weight_decay: float = Field(0.1, ge=0)
    beta1: float = Field(0.9, ge=0, lt=1)
    beta2: float = Field(0.99, ge=0, lt=1)
    grad_clip: float = Field(1.0, ge=0, description="0 disables clipping")
    ema_decay: float = Field(
        0.0, ge=0, lt=1, description="evaluate and keep an exponential moving average of the weights; 0 = off"
    )
    eval_interval: int = Field(500, ge=1)
    eval_iters: int = Field(50, ge=1)
    seed: int = 1337
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"  # mps: Apple GPUs, asked for by name
    compile: bool = False
    threads: int | None = Field(None, ge=1, description="torch intra-op threads on CPU (default 1: measured fastest)")
    diagnostics: bool = False
    diagnostics_interval: int = Field(100, ge=1, description="steps between diagnostics records")
    tensorboard: bool = Field(True, description="write TensorBoard event files next to metrics.jsonl")
    samples: int = Field(10, ge=0, description="samples printed at the end")
    init_from: str | None = Field(None, description="a model folder or checkpoint whose weights to fine-tune")

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if (self.dataset is None) == (self.data is None) and self.data is None:
            raise ValueError("give a built-in dataset or a data path")
        if self.min_lr > self.learning_rate:
            raise ValueError("min_lr must not exceed learning_rate")
        config_cls, _ = FAMILIES[self.arch]
        allowed = set(config_cls.model_fields) - {"vocab_size"}
        unknown = sorted(set(self.model) - allowed)
        if unknown:
            raise ValueError(f"unknown model key(s) for {self.arch}: {', '.join(unknown)}")
        if self.model.get("block_size") == "auto" and not family(self.arch).kv_cache:
            raise ValueError(f'model.block_size = "auto" is for a gpt on lines data, not {self.arch}')
        return self

    @property
    def decay_iters(self) -> int:
        return self.lr_decay_iters or self.max_iters


def parse_override(item: str) -> tuple[list[str], Any]:
    """'model.n_layer=4' -> (['model', 'n_layer'], 4); values are TOML literals, else plain strings."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {item!r}: expected key=value")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key.strip().split("."), value


def load_config(path: Path | str, overrides: list[str] = (), **extra: Any) -> TrainConfig:
    """Read a TOML config, apply `--set` overrides and keyword extras, validate."""
    path = Path(path)
    if not path.is_file() and (CONFIG_DIR / f"{path.name}.toml").is_file():
        path = CONFIG_DIR / f"{path.name}.toml"
    if not path.is_file():
        raise ConfigError(f"config {path} does not exist (shipped configs are in {CONFIG_DIR})")
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    return config_from(raw, str(path), overrides, **extra)


def config_from(raw: dict[str, Any], where: str, overrides: list[str] = (), **extra: Any) -> TrainConfig:
    """A config dict (a TOML file's, or one recorded in a checkpoint) with overrides applied, validated."""
    raw = copy.deepcopy(raw)
    for item in overrides:
        keys, value = parse_override(item)
        node = raw
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item!r}: {k} is not a table")
        node[keys[-1]] = value
    raw.update({k: v for k, v in extra.items() if v is not None})
    if extra.get("data") is not None:
        raw["dataset"] = None  # a data file replaces the config's built-in dataset
    return validate_config(raw, where)


# Keys that shape the weights or the data: a resumed run must keep them (dropout and the schedule may change).
RESUME_KEYS = ("arch", "dataset", "data", "format", "split_seed", "model")


def resume_mismatch(saved: dict[str, Any], cfg: TrainConfig) -> list[str]:
    """'key (saved -> now)' for every key a --resume cannot change; [] when the run can continue."""
    now = cfg.model_dump()
    diffs = []
    for key in RESUME_KEYS:
        a, b = saved.get(key), now.get(key)
        if key == "model":
            for k in sorted(set(a or {}) | set(b or {})):
                if k != "dropout" and (a or {}).get(k) != (b or {}).get(k):
                    diffs.append(f"model.{k} ({(a or {}).get(k)} -> {(b or {}).get(k)})")
        elif a != b:
            diffs.append(f"{key} ({a} -> {b})")
    if bool(saved.get("ema_decay")) != bool(now["ema_decay"]):
        diffs.append(f"ema_decay ({saved.get('ema_decay')} -> {now['ema_decay']})")
    return diffs


def validate_config(raw: dict[str, Any], where: str = "config") -> TrainConfig:
    try:
        return TrainConfig.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        key = ".".join(str(p) for p in first["loc"]) or "config"
        msg = first["msg"].removeprefix("Value error, ")
        if first["type"] == "extra_forbidden":
            msg = "unknown key"
        raise ConfigError(f"{where}: {key}: {msg}") from None
