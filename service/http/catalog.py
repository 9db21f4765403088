"""The served models as the API servers see them (no engine needed): lookup, /v1/models cards, and the
models a worker could not load, which are left out like failed folders."""

from __future__ import annotations

from typing import Any

from contract import Manifest
from contract.precision import served_precision, served_test_loss
from service.errors import APIError
from service.http.bodies import ModelCard


class Catalog:
    def __init__(self, models: dict[str, Manifest], failed: dict[str, str], backend: str):
        self.models = dict(models)
        self.failed = dict(failed)
        self.backend = backend
        self.settled = False

    def apply_worker_failures(self, infos: list[dict[str, Any]]) -> None:
        """Once every worker reported: drop what some worker could not load (the same on every worker)."""
        if self.settled or not infos or not all(infos):
            return
        for info in infos:
            for name, reason in (info.get("failed") or {}).items():
                if name in self.models:
                    del self.models[name]
                    self.failed[name] = f"could not be loaded: {reason}"
        self.settled = True

    def resolve(self, name: str) -> Manifest:
        manifest = self.models.get(name)
        if manifest is None:
            available = ", ".join(sorted(self.models)) or "none"
            raise APIError(
                404,
                f"model {name!r} does not exist; available models: {available}",
                type="invalid_request_error",
                param="model",
                code="model_not_found",
            )
        return manifest

    def cards(self) -> list[dict[str, Any]]:
        return [
            ModelCard(
                id=name,
                created=int(m.created_at.timestamp()),
                arch=m.arch,
                n_params=m.n_params,
                vocab_size=len(m.vocab),
                block_size=m.block_size,
                format=m.format,
                test_loss=served_test_loss(m),
                backend=self.backend,
                precision=served_precision(m),
            ).model_dump()
            for name, m in sorted(self.models.items())
        ]
