"""The model card's "Reproduce" command: a command that runs, from the run's recorded config.

A run of a shipped config is `--config training/configs/NAME.toml` plus one `--set` per key the run
changed. Anything else (a fine-tune, whose `<model>-finetune` name is no file; a config of the user's)
is the recorded config itself, printed as TOML to save as `config.toml`. A user's data file is named
by its file name only: the absolute path of the machine it was trained on means nothing to a reader.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

from training.config import CONFIG_DIR, ConfigError, load_config

SAVED_AS = "config.toml"
FLAG_KEYS = ("data", "init_from")  # given as --data / --init-from, never inside the config


def train_command(config: dict[str, Any]) -> tuple[str, str | None]:
    """(the train command, the TOML to save as config.toml or None when a shipped config is used)."""
    if config.get("fit") == "counts":  # `python -m training counts`: no training loop to reproduce
        return _counts_command(config), None
    args = ["python", "-m", "training", "train"]
    shipped = _shipped(config)
    toml = None
    if shipped is not None:
        args += ["--config", f"training/configs/{config['name']}.toml"]
        for key, value in _differences(shipped, config):
            args += ["--set", f"{key}={toml_value(value)}"]
    else:
        args += ["--config", SAVED_AS]
        toml = to_toml({k: v for k, v in config.items() if k not in FLAG_KEYS})
    if config.get("init_from"):
        args += ["--init-from", str(config["init_from"])]
    if config.get("data"):
        args += ["--data", Path(str(config["data"])).name]
    return shlex.join(args), toml


def _counts_command(config: dict[str, Any]) -> str:
    args = ["python", "-m", "training", "counts", "--smoothing", f"{config.get('smoothing', 1.0):g}"]
    if config.get("name") and (CONFIG_DIR / f"{config['name']}.toml").is_file():
        args += ["--config", str(config["name"])]
    for item in config.get("set") or []:
        args += ["--set", str(item)]
    if config.get("data"):
        args += ["--data", Path(str(config["data"])).name]
    return shlex.join(args)


def _shipped(config: dict[str, Any]) -> dict[str, Any] | None:
    """The shipped config of the same name, resolved, when this run is that config (not a fine-tune)."""
    name = config.get("name")
    if not name or config.get("init_from") or not (CONFIG_DIR / f"{name}.toml").is_file():
        return None
    try:
        return load_config(CONFIG_DIR / f"{name}.toml").model_dump()
    except ConfigError:
        return None


def _differences(base: dict[str, Any], config: dict[str, Any]) -> list[tuple[str, Any]]:
    """(dotted key, value) for every key of `config` that differs from `base`, the data flags excepted."""
    out: list[tuple[str, Any]] = []
    for key in sorted(set(base) | set(config)):
        if key in FLAG_KEYS or key in ("dataset", "format"):
            continue
        a, b = base.get(key), config.get(key)
        if key == "model":
            out += [(f"model.{k}", v) for k, v in sorted((b or {}).items()) if (a or {}).get(k) != v]
        elif a != b and b is not None:
            out.append((key, b))
    return out


def toml_value(value: Any) -> str:
    """A TOML literal (what `--set` and the config files read)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string: JSON's escapes are TOML's
    raise TypeError(f"no TOML literal for {value!r}")


def to_toml(config: dict[str, Any]) -> str:
    """The config as TOML: top-level keys, then the [model] table; None values are left out (defaults)."""
    lines = [f"{k} = {toml_value(v)}" for k, v in sorted(config.items()) if v is not None and not isinstance(v, dict)]
    for table, values in sorted((k, v) for k, v in config.items() if isinstance(v, dict)):
        lines += ["", f"[{table}]"]
        lines += [f"{k} = {toml_value(v)}" for k, v in sorted(values.items()) if v is not None]
    return "\n".join(lines)
