"""One running server's parts, as the routes see them: the LitServer, its spec, the workers' shared board,
the served models and the settings (built by service.server.build)."""

from __future__ import annotations

from dataclasses import dataclass

import litserve as ls
from litserve.specs.base import LitSpec

from service.http.catalog import Catalog
from service.settings import Settings
from service.shared import SharedState


@dataclass
class App:
    server: ls.LitServer
    spec: LitSpec
    shared: SharedState
    catalog: Catalog
    settings: Settings
