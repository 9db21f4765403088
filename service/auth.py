"""API keys: a standalone ASGI middleware (pure ASGI, so streamed bodies pass through untouched) that
answers 401 in the OpenAI error shape unless `Authorization: Bearer <key>` names a configured key.

LitServe adds its `middlewares` in order with `app.add_middleware`, which makes the *last* one
outermost; the request id (service.request_ids) goes outside this one, so a 401 carries an id too.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Iterable
from pathlib import Path

from starlette.types import ASGIApp, Receive, Scope, Send

# Paths a load balancer or kubelet probes without credentials.
PUBLIC_PATHS = frozenset({"/health", "/ready"})
_VALID_KEY = re.compile(r"[\x21-\x7e]+")


def load_api_keys(value: str | None) -> tuple[str, ...]:
    """Keys from `CHARLM_API_KEY`: a comma list (`k1,k2`), or `@FILE` / an absolute path to a file with one
    key per line (blank lines and `#` comments skipped), which is how a Kubernetes Secret is mounted.

    Raises ValueError with a one-line message on a missing file, an empty list or a key that cannot be
    sent in a header; `None` or an empty string means no authentication.
    """
    if not value or not value.strip():
        return ()
    value = value.strip()
    if value.startswith(("@", "/")):
        path = Path(value.removeprefix("@"))
        try:
            text = path.read_text()
        except OSError as exc:
            raise ValueError(f"cannot read the API key file {path}: {exc.strerror or exc}") from None
        raw = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
        where = f"the API key file {path}"
    else:
        raw = [k.strip() for k in value.split(",") if k.strip()]
        where = "the API key list"
    if not raw:
        raise ValueError(f"{where} holds no key")
    for i, key in enumerate(raw, 1):
        if not _VALID_KEY.fullmatch(key):
            raise ValueError(f"key {i} in {where} has spaces or non-ASCII characters; it cannot be sent in a header")
    return tuple(dict.fromkeys(raw))


def _digest(key: str | bytes) -> bytes:
    return hashlib.sha256(key.encode() if isinstance(key, str) else key).digest()


class ApiKeyMiddleware:
    """401 unless `Authorization: Bearer <key>` names one of `keys`; PUBLIC_PATHS stay open for probes.

    Keys are compared as sha256 digests with hmac.compare_digest against every key (no early exit), so
    neither the key's length nor which key nearly matched shows in the timing. No keys: a pass-through.
    """

    def __init__(self, app: ASGIApp, keys: Iterable[str] = (), public_paths: Iterable[str] = PUBLIC_PATHS):
        self.app = app
        self.digests = tuple(_digest(k) for k in keys)
        self.public_paths = frozenset(public_paths)

    def allowed(self, scope: Scope) -> bool | None:
        """True for a good key, False for a wrong one, None for none sent."""
        auth = next((v for k, v in scope.get("headers", ()) if k == b"authorization"), None)
        if auth is None:
            return None
        scheme, _, token = auth.partition(b" ")
        token = token.strip()
        if scheme.lower() != b"bearer" or not token:
            return None
        given = _digest(token)
        ok = False
        for digest in self.digests:
            ok |= hmac.compare_digest(given, digest)
        return ok

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self.digests or scope["type"] not in ("http", "websocket") or scope["path"] in self.public_paths:
            await self.app(scope, receive, send)
            return
        verdict = self.allowed(scope)
        if verdict:
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        message = (
            "Incorrect API key provided."
            if verdict is False
            else "Missing API key: send it as the header 'Authorization: Bearer <key>'."
        )
        await send_error(send, 401, message, "invalid_api_key", [(b"www-authenticate", b"Bearer")])


async def send_error(send: Send, status: int, message: str, code: str, headers: list[tuple[bytes, bytes]]) -> None:
    """An OpenAI-shaped error answer (`{"error": {message, type, param, code}}`), sent straight to ASGI."""
    body = json.dumps(
        {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}}
    ).encode()
    head = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *headers]
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": body})
