"""`train --init-from models/NAME --data my.txt`: fine-tune a shipped model (or a run's checkpoint).

The starting net fixes what the weights depend on: the architecture, the net config (only dropout may
change) and the vocabulary, which the new data must fit. The rest of the recipe is the model's own
recorded training config (or --config), with --set overrides: e.g. `--set max_iters=500`. An inherited
warmup is cut to max_iters // 10 (names_gpt's 300 warmup steps made a 300-step fine-tune end at its peak
learning rate); `--set warmup_iters=N` keeps N.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from training.checkpoint import CheckpointMeta, load_meta
from training.config import ConfigError, TrainConfig, config_from, load_config
from training.data import Corpus, DataError, Vocab

FREE_MODEL_KEYS = ("dropout",)  # a net config key that does not shape the weights


def init_config(
    init_from: str, config: str | None, overrides: list[str], data: str | None, fmt: str | None, **extra: Any
) -> TrainConfig:
    """The fine-tuning config: the start's arch and net config, its recorded recipe unless --config."""
    meta = load_meta(Path(init_from))
    start = {k: v for k, v in meta.model.items() if k != "vocab_size"}
    fmt = fmt or (meta.format if data else None)
    if config is not None:
        base = load_config(config, overrides, data=data, format=fmt, **extra)
        if base.arch != meta.arch:
            raise ConfigError(f"--init-from {init_from} is a {meta.arch}; --config {config} trains a {base.arch}")
        raw, overrides = base.model_dump(), []
    else:
        raw = {k: v for k, v in meta.train_config.items() if k in TrainConfig.model_fields}
        raw["name"] = f"{Path(init_from).resolve().name}-finetune"
    raw.update(arch=meta.arch, init_from=str(init_from), model={**start, **raw.get("model", {})})
    cfg = config_from(raw, f"--init-from {init_from}", overrides, data=data, format=fmt, **extra)
    cfg = _fit_warmup(cfg, inherited=config is None, overrides=overrides)
    differ = [
        f"model.{k} ({start.get(k)} -> {v})"
        for k, v in sorted(cfg.model.items())
        if k not in FREE_MODEL_KEYS and v != start.get(k)
    ]
    if differ:
        raise ConfigError(f"--init-from {init_from} fixes the net, but the config changes {', '.join(differ)}")
    return cfg


WARMUP_FRACTION = 10  # an inherited warmup is at most max_iters // 10


def _fit_warmup(cfg: TrainConfig, inherited: bool, overrides: list[str]) -> TrainConfig:
    """A recipe's warmup was sized for its own run (names_gpt: 300 of 40,000 steps); a short fine-tune that
    inherits it (300 steps) would end at the peak learning rate. Scale it down, unless it was --set."""
    if not inherited or any(item.partition("=")[0].strip() == "warmup_iters" for item in overrides):
        return cfg
    return cfg.model_copy(update={"warmup_iters": min(cfg.warmup_iters, cfg.max_iters // WARMUP_FRACTION)})


def start_vocab(meta: CheckpointMeta, corpus: Corpus) -> Vocab:
    """The starting model's vocabulary, after checking the new data fits it (format and characters)."""
    if corpus.format != meta.format:
        raise DataError(f"the model is a {meta.format} model; {corpus.name} is read as {corpus.format} data")
    vocab = Vocab(chars=tuple(meta.vocab), boundary=meta.boundary_token)
    used = set(corpus.text) - ({"\n", "\r"} if corpus.format == "lines" else set())
    content = set(meta.vocab) - ({meta.vocab[meta.boundary_token]} if meta.boundary_token is not None else set())
    missing = sorted(used - content)
    if missing:
        listed = ", ".join(map(repr, missing))
        raise DataError(
            f"{corpus.name} has {len(missing)} character(s) the model's vocabulary lacks: {listed} "
            "(fine-tuning keeps the vocabulary; remove them from the data)"
        )
    return vocab
