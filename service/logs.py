"""Structured logs: text or one JSON object per line, each with the request id of the request it is about."""

from __future__ import annotations

import json
import logging
import logging.config
from datetime import UTC, datetime
from typing import Any

from service.request_ids import request_id_var

# Attributes every LogRecord has; anything else on a record came from `extra=` and goes into the JSON.
# uvicorn's `color_message` repeats the message with terminal colours: never a field of its own.
_RECORD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message",
    "asctime",
    "request_id",
    "color_message",
}
TEXT_FORMAT = "%(asctime)s %(levelname)s %(processName)s[%(process)d] %(name)s: %(message)s"


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _RECORD_ATTRS and not k.startswith("_")}


class RequestIdFilter(logging.Filter):
    """Puts the current request id (or None) on every record as `record.request_id`."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            record.request_id = request_id_var.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ms), level, logger, message, request_id, pid, the record's
    `extra=` fields (route, model, status, latency_ms, tokens, ...) and `exc` with the traceback."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", None) or request_id_var.get(),
            "pid": record.process,
        }
        out.update(_extras(record))
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """The classic one-line format, with `key=value` for the request id and the `extra=` fields."""

    def __init__(self, fmt: str = TEXT_FORMAT, **kwargs: Any):
        super().__init__(fmt, **kwargs)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        pairs = {"request_id": getattr(record, "request_id", None) or request_id_var.get(), **_extras(record)}
        tail = " ".join(f"{k}={v}" for k, v in pairs.items() if v is not None)
        if not tail:
            return line
        first, nl, rest = line.partition("\n")  # keep a traceback below the line it belongs to
        return f"{first} {tail}{nl}{rest}"


LOG_FORMATS = ("text", "json")


def logging_config(level: str | int = "info", fmt: str = "text", uvicorn_access: bool = False) -> dict[str, Any]:
    """A logging.config.dictConfig dict for charlm and uvicorn (pass it as uvicorn's `log_config`).

    Everything goes to stderr through one handler in one format. uvicorn's own access log is off unless
    `uvicorn_access`: the service writes its own access line with the model, tokens and request id.
    """
    if fmt not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}, not {fmt!r}")
    level_name = logging.getLevelName(level) if isinstance(level, int) else level.upper()
    formatter = {"()": f"{__name__}.{'JsonFormatter' if fmt == 'json' else 'TextFormatter'}"}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"request_id": {"()": f"{__name__}.RequestIdFilter"}},
        "formatters": {"charlm": formatter},
        "handlers": {
            "charlm": {
                "class": "logging.StreamHandler",
                "stream": "ext://sys.stderr",
                "formatter": "charlm",
                "filters": ["request_id"],
            }
        },
        "root": {"handlers": ["charlm"], "level": level_name},
        "loggers": {
            # uvicorn installs its own handlers unless told otherwise: send them to the root's instead.
            "uvicorn": {"handlers": [], "level": level_name, "propagate": True},
            "uvicorn.error": {"handlers": [], "level": level_name, "propagate": True},
            # LitServe gives its logger a stdout handler of its own (at import and in run()): take it back.
            "litserve": {"handlers": [], "level": level_name, "propagate": True},
            "uvicorn.access": {
                "handlers": [],
                "level": level_name if uvicorn_access else "WARNING",
                "propagate": True,
            },
        },
    }


def configure_logging(level: str | int = "info", fmt: str = "text", uvicorn_access: bool = False) -> dict[str, Any]:
    """Apply logging_config() to this process and return it, for uvicorn's `log_config=`."""
    config = logging_config(level, fmt, uvicorn_access)
    logging.config.dictConfig(config)
    return config
