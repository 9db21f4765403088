"""The packages' layering, checked in fresh interpreters: `engine` loads neither torch nor the HTTP stack,
`training` never imports `service`, and the API side's protocol module stays free of numpy."""

import subprocess
import sys

import pytest

from tests.support.serving import REPO


def _loaded_after(code: str, watch: tuple[str, ...]) -> list[str]:
    probe = f"import sys\n{code}\nprint(' '.join(m for m in {watch!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True)
    return out.stdout.split()


def test_engine_pulls_neither_torch_nor_the_http_stack() -> None:
    code = "import engine\nengine.Engine, engine.Generator, engine.DataHashes, engine.load_backend"
    assert _loaded_after(code, ("torch", "litserve", "fastapi", "starlette", "service", "training")) == []


def test_engine_types_load_without_numpy() -> None:
    # The API server processes import the protocol (engine's value types) and must stay light.
    assert _loaded_after("import service.protocol", ("numpy", "onnxruntime", "torch")) == []


def test_training_does_not_import_service() -> None:
    code = (
        "import importlib, pkgutil, training\n"
        "for m in pkgutil.walk_packages(training.__path__, 'training.'):\n"
        "    if not m.name.endswith('__main__'):\n"
        "        importlib.import_module(m.name)"
    )
    assert _loaded_after(code, ("service",)) == []


def test_an_unknown_engine_name_is_an_attribute_error() -> None:
    import engine

    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        engine.Nope  # noqa: B018
