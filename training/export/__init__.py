"""`training export`: checkpoint -> models/<name>/ (model.onnx, model.ts, model.safetensors, manifest.json,
README.md); `training upgrade`: a v1 model folder -> graph contract v2 (training.export.upgrade).

`export_checkpoint` is imported on first use (it pulls in torch and the ONNX exporter), so that the
CLI can report a mistyped path before paying for those imports. The CLI is training.export.cli.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from training.export.errors import ExportError, ParityError

if TYPE_CHECKING:
    from training.export.core import export_checkpoint

__all__ = ["ExportError", "ParityError", "export_checkpoint"]


def __getattr__(name: str) -> Any:
    if name == "export_checkpoint":
        from training.export.core import export_checkpoint

        return export_checkpoint
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
