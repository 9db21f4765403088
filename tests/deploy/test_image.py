"""The serving image `make docker` builds, with the real docker: both tags, the OCI provenance labels from
the build arguments, and the same revision in charlm_build_info. Skips without a docker daemon (start one
and the stand-in base image with ../shared/tools/docker-base.sh): CI's machine runs none, and building the
stand-in base there would cost minutes of every run.
The image's runtime behaviour (ready, auth, drain on `docker stop`) is deploy/smoke.sh's (`make docker-smoke`).
"""

from __future__ import annotations

import json
import tomllib
import uuid
from collections.abc import Iterator
from datetime import datetime

import pytest

from tests.support.deploy import ROOT, checkout_revision, run


@pytest.fixture(scope="module")
def image() -> Iterator[str]:
    if run("docker", "info").returncode != 0:
        pytest.skip("no docker daemon: bash ../shared/tools/docker-base.sh starts one")
    repo = f"charlm-test-{uuid.uuid4().hex[:8]}"
    res = run("make", "--no-print-directory", "docker", f"IMAGE={repo}", timeout=1200)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    try:
        yield repo
    finally:
        version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
        run("docker", "rmi", f"{repo}:{version}", f"{repo}:latest")


def test_make_docker_tags_the_release_and_latest_with_provenance_labels(image: str) -> None:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    head = checkout_revision()
    ids = {run("docker", "image", "inspect", "-f", "{{.Id}}", f"{image}:{tag}").stdout for tag in (version, "latest")}
    assert len(ids) == 1 and ids != {""}
    res = run("docker", "image", "inspect", "-f", "{{json .Config.Labels}}", f"{image}:{version}")
    labels = json.loads(res.stdout)
    assert labels["org.opencontainers.image.version"] == version
    assert labels["org.opencontainers.image.revision"] == head
    created = datetime.fromisoformat(labels["org.opencontainers.image.created"].replace("Z", "+00:00"))
    assert created.tzinfo is not None
    assert labels["org.opencontainers.image.source"]


def test_the_image_reports_the_revision_it_was_built_from(image: str) -> None:
    head = checkout_revision()
    code = "from service import metrics; print(metrics.build_revision())"
    res = run("docker", "run", "--rm", "--read-only", "--entrypoint", "python", f"{image}:latest", "-c", code)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == head
