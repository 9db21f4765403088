"""Failing fast on a bad model repository or a read-only root, through the CLI: exit code 2 and one line
on stderr (no traceback), or, with --allow-empty, a server that serves nothing and says so on /ready."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from contract.repository import scan_repository
from tests.support.serving import MODELS, REPO, start_server


def serve(*args: str, env: dict[str, str] | None = None, code: str | None = None) -> subprocess.CompletedProcess:
    """`python -m service serve ARGS` (or `python -c CODE ARGS`), in a clean environment."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("CHARLM_") and k != "PROMETHEUS_MULTIPROC_DIR"}
    full_env.update(env or {})
    cmd = [sys.executable, "-c", code, *args] if code else [sys.executable, "-m", "service", "serve", *args]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=full_env, timeout=120)


def one_line(out: subprocess.CompletedProcess) -> str:
    assert out.returncode == 2, (out.returncode, out.stderr[-2000:])
    assert "Traceback" not in out.stderr, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("python -m service: error: ")
    return lines[0]


def test_an_empty_models_folder_exits_2_naming_it(tmp_path: Path) -> None:
    line = one_line(serve("--models", str(tmp_path)))
    assert str(tmp_path) in line and "no model folders" in line and "--allow-empty" in line


def test_only_bad_folders_exit_2_with_each_reason(tmp_path: Path) -> None:
    (tmp_path / "no-manifest").mkdir()
    (tmp_path / "bad-json").mkdir()
    (tmp_path / "bad-json" / "manifest.json").write_text("{not json")
    line = one_line(serve("--models", str(tmp_path)))
    assert f"no servable model in {tmp_path}: " in line
    assert "no-manifest/: no manifest.json" in line
    assert "bad-json/: " in line
    assert line.count(str(tmp_path)) == 1  # the folder once; each sub-folder by its name


def test_duplicate_model_names_are_all_refused(tmp_path: Path) -> None:
    (tmp_path / "a-copy").symlink_to(MODELS / "names-gpt")
    (tmp_path / "b-copy").symlink_to(MODELS / "names-gpt")
    line = one_line(serve("--models", str(tmp_path)))
    assert "a-copy/: model name 'names-gpt' is also used by b-copy/" in line
    assert "b-copy/: model name 'names-gpt' is also used by a-copy/" in line
    (tmp_path / "other").symlink_to(MODELS / "names-wavenet")
    repo = scan_repository(tmp_path)  # with another model the server starts, without either copy
    assert list(repo.models) == ["names-wavenet"] and sorted(repo.failed) == ["a-copy", "b-copy"]


def test_no_writable_temp_dir_says_to_mount_a_tmpfs() -> None:
    read_only_root = (
        "import sys, tempfile; tempfile._candidate_tempdir_list = lambda: ['/proc/charlm-ro']; tempfile.tempdir = None;"
        "from service.cli import main; sys.exit(main(['serve', *sys.argv[1:]]))"
    )
    line = one_line(serve("--models", str(MODELS), code=read_only_root))
    assert "no writable temporary directory" in line and "mount a tmpfs on /tmp" in line and "TMPDIR" in line


def test_an_unwritable_metrics_dir_exits_2() -> None:
    line = one_line(serve(env={"PROMETHEUS_MULTIPROC_DIR": "/proc/charlm-metrics"}))
    assert "PROMETHEUS_MULTIPROC_DIR=/proc/charlm-metrics is not a writable folder" in line


def _unloadable_copy(src: Path, dst: Path) -> None:
    """A folder whose manifest checks out but whose ONNX file is no model: only a worker finds out."""
    shutil.copytree(src, dst)
    junk = b"not an onnx model\n" * 100
    (dst / "model.onnx").write_bytes(junk)
    manifest = json.loads((dst / "manifest.json").read_text())
    manifest["files"]["onnx"].update(bytes=len(junk), sha256=hashlib.sha256(junk).hexdigest())
    (dst / "manifest.json").write_text(json.dumps(manifest))


def test_models_no_worker_can_load_exit_2(tmp_path: Path) -> None:
    _unloadable_copy(MODELS / "names-gpt", tmp_path / "names-gpt")
    srv = start_server(models=tmp_path, wait=False)
    try:
        code = srv.proc.wait(60)
    finally:
        srv.stop()
    log = srv.log()
    srv.remove_log()
    assert code == 2, log[-3000:]
    assert "Traceback" not in log, log[-3000:]
    assert "python -m service: error: no model could be loaded: names-gpt (could not be loaded: " in log


def test_allow_empty_serves_nothing_and_ready_says_so(tmp_path: Path) -> None:
    srv = start_server("--allow-empty", models=tmp_path, wait=False)
    try:
        deadline, body = time.monotonic() + 60, {}
        while time.monotonic() < deadline and srv.proc.poll() is None:
            try:
                reply = httpx.get(srv.url("/ready"), timeout=2)
            except httpx.HTTPError:
                time.sleep(0.2)
                continue
            body = reply.json()
            if all(w["status"] == "ready" for w in body["workers"].values()):
                break
            time.sleep(0.2)
        assert srv.proc.poll() is None, srv.log()[-3000:]
        assert reply.status_code == 503 and body["reason"] == "no model could be loaded" and body["models"] == []
        assert httpx.get(srv.url("/v1/models"), timeout=5).json()["data"] == []
    finally:
        srv.stop()
        srv.remove_log()


def test_allow_empty_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """CHARLM_ALLOW_EMPTY is a boolean like any other setting (a bad one is refused)."""
    from service.settings import load_settings

    for value in ("yes", "1", "true"):
        monkeypatch.setenv("CHARLM_ALLOW_EMPTY", value)
        assert load_settings().allow_empty is True
    assert "--allow-empty / CHARLM_ALLOW_EMPTY" in one_line(serve(env={"CHARLM_ALLOW_EMPTY": "maybe"}))
