"""GETs of a path that LitServe's app already routes, answered by a charlm route instead.

LitServe registers `/` itself (plain text), and the FastAPI app it builds registers `/docs` (Swagger UI
from a CDN); neither has a constructor argument to leave its route out. So `Aliases`, a middleware passed
through LitServer(middlewares=...), innermost, hands such a GET to charlm's route before routing: `/` to
the playground, `/docs` to the offline Swagger UI. Their routes stay as they were registered, and the
outer middlewares (metrics, keys, access log) still see the path that was asked for.
"""

from __future__ import annotations

from collections.abc import Mapping

from starlette.types import ASGIApp, Receive, Scope, Send


class Aliases:
    def __init__(self, app: ASGIApp, paths: Mapping[str, str]):
        self.app = app
        self.paths = dict(paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "GET":
            target = self.paths.get(scope["path"])
            if target is not None:
                scope = {**scope, "path": target, "raw_path": target.encode()}
        await self.app(scope, receive, send)
