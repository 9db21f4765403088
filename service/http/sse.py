"""Server-Sent Events framing for the streaming routes.

LitServe 0.2.19 streams raw chunked text (no text/event-stream, no framing), so the handlers build the
events themselves: one `data: <json>` event per chunk, a final event with finish reasons and usage,
then `data: [DONE]` (what OpenAI clients wait for). An error after the 200 has gone out can only be
told in-band: `data: {"error": {...}}`, which the openai client raises as an APIError.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

MEDIA_TYPE = "text/event-stream"
HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
DONE = b"data: [DONE]\n\n"


def event(data: dict[str, Any]) -> bytes:
    """One SSE event carrying `data` as compact JSON (JSON never contains a raw newline)."""
    return b"data: " + json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode() + b"\n\n"


def events(bodies: Iterable[dict[str, Any]]) -> bytes:
    """Several events in one piece (one write)."""
    return b"".join(event(body) for body in bodies)
