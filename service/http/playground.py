"""The web playground: one page at `/` and `/playground` to try the served models in a browser.

LitServe answers `/` itself (plain text), so a GET of `/` reaches `/playground` through the `Aliases`
middleware (service/http/aliases.py); LitServe's route stays as LitServe registered it.

Plain HTML + JavaScript + CSS from `service/static/` (shipped as package data; no build step, no CDN, so
it works offline and in the Docker image). The page uses only the public API: `GET /v1/models` and
`POST /v1/generate` with `stream: true`, read with fetch (EventSource cannot POST). When API keys are
set, the page and its assets stay open (they hold no data: pass PUBLIC_PATHS to the ApiKeyMiddleware),
and the page asks for a key, which it keeps in sessionStorage and sends as `Authorization: Bearer`.

"""

from __future__ import annotations

from pathlib import Path

from fastapi import HTTPException
from fastapi.responses import FileResponse

STATIC = Path(__file__).resolve().parents[1] / "static"
PAGE = "playground.html"
# The assets the page loads, with their media types; nothing else under static/ is served.
ASSETS = {
    "playground.js": "text/javascript; charset=utf-8",
    "playground.css": "text/css; charset=utf-8",
}
PAGE_PATH = "/playground"
PAGE_PATHS = ("/", PAGE_PATH)
ASSET_PREFIX = "/static/"
# Paths that must stay open when API keys are set: the page has to load before it can ask for a key.
PUBLIC_PATHS = frozenset({*PAGE_PATHS, *(ASSET_PREFIX + name for name in ASSETS)})
# A page that changes with the server version must not be served stale from a browser cache.
HEADERS = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}


async def page() -> FileResponse:
    return FileResponse(STATIC / PAGE, media_type="text/html; charset=utf-8", headers=HEADERS)


async def asset(name: str) -> FileResponse:
    media_type = ASSETS.get(name)
    if media_type is None:
        raise HTTPException(404, "Not Found")
    return FileResponse(STATIC / name, media_type=media_type, headers=HEADERS)
