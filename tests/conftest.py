"""Shared test set-up: where the corpora are (never committed; CI points CHARLM_DATA_DIR at ../shared/data),
and the `server` / `client` fixtures: one real server on the shipped models for the modules that use it."""

import os
import re
import subprocess
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("CHARLM_DATA_DIR", str(REPO.parent / "shared" / "data"))


@pytest.fixture(scope="module")
def server():
    """`python -m service serve` on the shipped models (defaults), for one test module."""
    from tests.support.serving import running_server

    with running_server() as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.base_url, timeout=60) as c:
        yield c


# Modules that start `python -m service serve` themselves (tests/support/serving.py's helpers) or take the shared
# server: their tests are marked `server`; every other test runs in-process and is marked `inprocess`.
_SERVER_HELPERS = ("start_server", "running_server", "ServerProcess")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """`pytest -m inprocess` is the quick suite (no server process); `-m server` the real-server one."""
    for item in items:
        module = getattr(item, "module", None)
        real = {"server", "client"} & set(getattr(item, "fixturenames", ())) or any(
            hasattr(module, name) for name in _SERVER_HELPERS
        )
        item.add_marker(pytest.mark.server if real else pytest.mark.inprocess)


# A fresh clone without the corpora: subprocess failures read as their one-line reason, never as pytest's
# bare "CalledProcessError: ... returned non-zero exit status 1".
_CORPUS_MISSING = re.compile(r"DataError: (cannot download |\S+ is not available)")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A test whose child process failed (`subprocess.run(..., check=True)`) reports the child's last stderr
    line and its tail; a corpus that can be neither found nor downloaded skips with that line (a failure
    in CI, which always has ../shared/data)."""
    outcome = yield
    report = outcome.get_result()
    exc = call.excinfo.value if call.excinfo else None
    if report.when != "call" or not isinstance(exc, subprocess.CalledProcessError):
        return
    err = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else exc.stderr or ""
    lines = [ln for ln in err.splitlines() if ln.strip()]
    reason = lines[-1].strip() if lines else f"exit status {exc.returncode}, nothing on stderr"
    in_ci = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
    if _CORPUS_MISSING.search(reason) and not in_ci:
        report.outcome = "skipped"
        report.longrepr = (str(item.path), item.location[1] or 0, f"Skipped: {reason}")
        return
    tail = "\n".join(lines[-15:])
    report.longrepr = f"child process exited with {exc.returncode}: {reason}\n\n--- its stderr, last lines ---\n{tail}"
