"""Server configuration: every option comes from a CLI flag or a CHARLM_* environment variable.

One pydantic-settings model is the single source of truth for names, defaults and limits; the CLI
passes only the flags that were given, so a flag beats the environment, which beats the default.
docs/configuration.md lists the same table for humans.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from service.protocol import MAX_REQUEST_TOKENS

ENV_PREFIX = "CHARLM_"
REPO_MODELS_DIR = Path(__file__).resolve().parent.parent / "models"
MAX_BODY_BYTES = 64 * 1024  # fixed by the API contract: bigger bodies get 413

Backend = Literal["onnx", "torchscript"]
Device = Literal["cpu", "cuda"]
Precision = Literal["float32", "int8"]
# LitServe 0.2.19 refuses any other bind address (LitServer.run checks the host against this list).
Host = Literal["127.0.0.1", "0.0.0.0", "::"]
LogLevel = Literal["critical", "error", "warning", "info", "debug"]
LogFormat = Literal["text", "json"]


class Settings(BaseSettings):
    """What `python -m service serve` runs with."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    models: Path = Field(REPO_MODELS_DIR, description="folder with one sub-folder per model")
    backend: Backend = Field("onnx", description="onnx (no torch needed) or torchscript (needs torch)")
    device: Device = Field("cpu", description="cpu, or cuda for one GPU")
    precision: Precision = Field(
        "float32", description="int8: serve the int8 ONNX graph of the models that have one (onnx backend)"
    )
    host: Host = Field("127.0.0.1", description="bind address; 0.0.0.0 in Docker")
    port: int = Field(8000, ge=1024, le=65535, description="TCP port (LitServe accepts 1024-65535)")
    workers: int = Field(1, ge=1, le=64, description="inference worker processes (both routes, every model)")
    api_servers: int = Field(1, ge=1, le=64, description="HTTP (uvicorn) processes")
    max_batch_size: int = Field(128, ge=1, le=1024, description="sequences per engine step (default of --slots)")
    slots: int | None = Field(None, ge=1, le=1024, description="sequence slots per model per worker")
    batch_timeout_ms: float = Field(
        5.0, gt=0, le=1000, description="a busy worker looks for new requests at least this often"
    )
    timeout: float = Field(30.0, gt=0, le=3600, description="seconds a request may take in all before 504")
    max_queue: int = Field(256, ge=1, le=100_000, description="admitted, unfinished requests before 503")
    max_request_tokens: int = Field(
        MAX_REQUEST_TOKENS, ge=1, description="prompts x samples x max tokens one request may ask for (400 over it)"
    )
    threads: int | None = Field(
        None, ge=1, le=256, description="cores per model engine (rows split across graph calls)"
    )
    drain_timeout: float = Field(20.0, ge=0, le=3600, description="seconds in-flight requests get after SIGTERM")
    stall_timeout: float = Field(10.0, gt=0, le=3600, description="seconds without a step before /health is 503")
    keep_alive_timeout: float = Field(
        5.0, gt=0, le=3600, description="seconds an idle keep-alive connection stays open"
    )
    body_timeout: float = Field(
        10.0, gt=0, le=3600, description="seconds from a request's headers to the end of its body before 408"
    )
    allow_empty: bool = Field(False, description="start even when no model can be served (/ready stays 503)")
    api_key: str | None = Field(None, description="API key(s): k1,k2 or @FILE; every route but /health, /ready")
    cors_origins: str | None = Field(None, description="CORS: allowed origins, comma-separated, or *; off by default")
    log_level: LogLevel = Field("info", description="log verbosity")
    log_format: LogFormat = Field("text", description="text or json (one object per line)")

    @field_validator("timeout")
    @classmethod
    def _timeout_covers_batching(cls, value: float, info: ValidationInfo) -> float:
        batch_ms = info.data.get("batch_timeout_ms")
        if batch_ms is not None and value * 1000 <= batch_ms:
            raise ValueError(f"must be longer than the batch timeout ({batch_ms:g} ms)")
        return value

    @field_validator("precision")
    @classmethod
    def _int8_is_onnx(cls, value: str, info: ValidationInfo) -> str:
        if value == "int8" and info.data.get("backend") not in (None, "onnx"):
            raise ValueError("int8 graphs are ONNX graphs: use it with --backend onnx")
        return value

    @field_validator("log_level", "log_format", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    def engine_threads(self) -> int:
        """Default threads: share the visible cores among the worker processes."""
        if self.threads is not None:
            return self.threads
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        return max(1, cores // self.workers)

    def cors_list(self) -> list[str]:
        return [o.strip() for o in (self.cors_origins or "").split(",") if o.strip()]

    def engine_slots(self) -> int:
        return self.slots if self.slots is not None else self.max_batch_size


def env_name(field: str) -> str:
    return ENV_PREFIX + field.upper()


def flag_name(field: str) -> str:
    return "--" + field.replace("_", "-")


def describe_error(exc: ValidationError) -> str:
    """One line naming the option (flag and variable) and what is wrong with it."""
    first = exc.errors()[0]
    field = str(first["loc"][0]) if first["loc"] else ""
    if not field:
        return first["msg"]
    value = first.get("input")
    where = f"{flag_name(field)} / {env_name(field)}"
    return f"invalid {where} value {value!r}: {first['msg'].removeprefix('Value error, ')}"


def load_settings(**overrides: object) -> Settings:
    """Settings from the environment, with the given (CLI) values on top; raises ValidationError."""
    return Settings(**{k: v for k, v in overrides.items() if v is not None})
