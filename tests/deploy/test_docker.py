"""Offline checks of the images' recipe: the Dockerfile's stages and layers, deploy/torch.Dockerfile, the
lock files they install, the build context, and the scripts and make targets around them.

The images themselves are built and run by `make docker-smoke` (deploy/smoke.sh), which needs dockerd.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path

import yaml

from tests.support.deploy import DEPLOY, ROOT, checkout_revision, dockerfile_stages, run

LOCKS = ROOT / "requirements"


def pinned(lock: str) -> dict[str, str]:
    """name -> version of every `name==version` line of a lock file (markers and hashes dropped)."""
    text = (LOCKS / lock).read_text()
    return {m[0].lower(): m[1] for m in re.findall(r"^([A-Za-z0-9_.-]+)==([^\s;\\]+)", text, re.MULTILINE)}


def test_default_target_is_the_torch_free_serving_image() -> None:
    """The last stage is what `docker build .` gives with any builder, and the legacy builder builds every
    stage above it: so none of them may be torch, and the torch image has its own file."""
    stages = dockerfile_stages()
    assert list(stages) == ["deps", "code", "serve"]
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11-slim$", text, re.MULTILINE)
    for stage in stages.values():
        assert stage[0].startswith("FROM ${PYTHON_IMAGE}")
        assert "torch" not in " ".join(stage)

    serve = stages["serve"]
    user = [ln.split()[1] for ln in serve if ln.startswith("USER ")][-1]
    assert user.split(":")[0] not in {"0", "root"}
    assert "EXPOSE 8000" in serve
    assert "STOPSIGNAL SIGINT" in serve
    (health,) = [ln for ln in serve if ln.startswith("HEALTHCHECK")]
    assert "/health" in health and "urllib" in health
    envs = " ".join(ln for ln in serve if ln.startswith("ENV"))
    assert "CHARLM_MODELS=/models" in envs and "CHARLM_HOST=0.0.0.0" in envs
    assert "PYTHONPATH=/opt/charlm" in envs


def test_serving_image_layers_put_the_code_last() -> None:
    """Dependencies in one layer from the hashed lock, then models, then the code: a code change ships only
    the last, small layer."""
    deps, code, serve = (dockerfile_stages()[s] for s in ("deps", "code", "serve"))
    (install,) = [ln for ln in deps if ln.startswith("RUN ") and "pip install" in ln]
    assert "--require-hashes -r /tmp/serve.lock" in install and "--no-deps" in install
    (build,) = [ln for ln in code if ln.startswith("RUN ") and "pip install" in ln]
    assert "--require-hashes -r /tmp/build.lock" in build and "--no-build-isolation" in build
    assert "COPY requirements/serve.lock /tmp/serve.lock" in deps
    copies = [ln for ln in serve if ln.startswith("COPY")]
    assert copies == [
        "COPY --from=deps /opt/venv /opt/venv",
        "COPY models/ /models/",
        "COPY --from=code /opt/charlm /opt/charlm",
    ]
    assert not [ln for ln in serve if ln.startswith("RUN") and "pip" in ln]
    assert any("--target /opt/charlm" in ln for ln in code)


def test_dockerfile_copies_every_package_and_dockerignore_lets_them_through() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = [p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]]
    code = dockerfile_stages()["code"]
    ignore = [ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines()]
    ignore = [ln for ln in ignore if ln and not ln.startswith("#")]
    assert ignore[0] == "*", ".dockerignore should be an allow-list"
    for pkg in packages:
        assert f"COPY {pkg} ./{pkg}" in code
        assert f"!{pkg}/" in ignore
    assert "!models/" in ignore and "!pyproject.toml" in ignore
    assert {"!requirements/serve.lock", "!requirements/dev.lock", "!requirements/build.lock"} <= set(ignore)


def test_torch_image_builds_on_the_serving_image_with_the_pinned_torch() -> None:
    stages = dockerfile_stages(DEPLOY / "torch.Dockerfile")
    (stage,) = stages.values()
    text = " ".join(stage)
    assert stage[0] == "FROM ${BASE_IMAGE}"
    assert re.search(r"^ARG BASE_IMAGE=charlm:\S+$", (DEPLOY / "torch.Dockerfile").read_text(), re.MULTILINE)
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    (torch_pin,) = [d for d in extras["torch"] if d.startswith("torch")]
    assert torch_pin in text and "-c /tmp/constraints.txt" in text and "/tmp/dev.lock >" in text
    # `python -m ensurepip -q` fails ("unrecognized arguments"): ensurepip has no -q.
    assert "ensurepip -q" not in text and "python -m ensurepip" in text
    assert [ln.split()[1] for ln in stage if ln.startswith("USER ")][-1] == "10001:10001"
    assert "CHARLM_BACKEND=torchscript" in text


def test_locks_pin_every_dependency_of_the_image_and_of_ci() -> None:
    serve, dev = pinned("serve.lock"), pinned("dev.lock")
    text = (LOCKS / "serve.lock").read_text()
    # Every pin in the image's lock carries hashes (pip --require-hashes refuses the file otherwise).
    hashed = re.findall(r"^([A-Za-z0-9_.-]+)==\S+[^\n]*\\\n\s+--hash=sha256:", text, re.MULTILINE)
    assert {h.lower() for h in hashed} == set(serve)
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = {re.split(r"[<>=!~;\[ ]", d)[0].lower() for d in extras["dependencies"]}
    assert names | {"litserve", "onnxruntime", "prometheus-client", "pydantic-settings", "uvloop"} <= set(serve)
    assert {"torch", "pytest", "httpx", "openai", "ruff", "uv", "kubernetes-validate"} <= set(dev)
    # The image runs the versions CI tests.
    assert {k: v for k, v in serve.items() if k in dev} == {k: dev[k] for k in serve if k in dev}
    assert serve["litserve"] == "0.2.19"
    assert "torch" not in serve


def test_ci_run_and_scripts_are_sound_bash() -> None:
    ci = ROOT / ".ci" / "run"
    text = ci.read_text()
    assert os.access(ci, os.X_OK)
    assert "set -euo pipefail" in text and "make test" in text
    assert "CHARLM_DATA_DIR" in text
    for script in (ci, DEPLOY / "smoke.sh"):
        res = run("bash", "-n", str(script))
        assert res.returncode == 0, res.stderr


def test_smoke_runs_the_image_as_production_does() -> None:
    smoke = (DEPLOY / "smoke.sh").read_text()
    assert 'docker build -t "$IMAGE" .' in smoke  # no --target: the default target is what ships
    for flag in ("--read-only", "--tmpfs /tmp", '--user "$RUN_USER"', "CHARLM_API_KEY="):
        assert flag in smoke
    assert "RUN_USER=${RUN_USER:-12345}" in smoke


def test_make_targets_install_from_the_lock_and_build_both_images() -> None:
    res = run("make", "-n", "-B", "--no-print-directory", "docker-torch", "IMAGE=reg/charlm", "REVISION=abc123")
    assert res.returncode == 0, res.stderr
    out = res.stdout.replace("\\\n", " ")
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    # The release tag and latest, with the provenance the Dockerfile turns into OCI labels.
    assert f"-t reg/charlm:{version} -t reg/charlm:latest ." in out
    assert f"--build-arg VERSION={version}" in out and "--build-arg REVISION=abc123" in out
    assert re.search(r"--build-arg CREATED=\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", out)
    assert "--build-arg SOURCE=" in out
    assert f"-f deploy/torch.Dockerfile --build-arg BASE_IMAGE=reg/charlm:{version}" in out
    makefile = (ROOT / "Makefile").read_text()
    assert "pip install --no-build-isolation -e '.[dev]' -c $(CONSTRAINTS)" in makefile
    assert re.search(r"^bench: .*\bwrk\b", makefile, re.MULTILINE)


def test_make_docker_revision_defaults_to_the_checkout() -> None:
    res = run("make", "-n", "-B", "--no-print-directory", "docker")
    head = checkout_revision()
    assert len(head) >= 40 and f"--build-arg REVISION={head} " in res.stdout


def test_image_labels_and_build_info_come_from_the_build_args() -> None:
    serve = dockerfile_stages()["serve"]
    args = {ln.split()[1].split("=")[0] for ln in serve if ln.startswith("ARG ")}
    assert {"VERSION", "REVISION", "CREATED", "SOURCE"} <= args
    (label,) = [ln for ln in serve if ln.startswith("LABEL")]
    for key, arg in (("version", "VERSION"), ("revision", "REVISION"), ("created", "CREATED"), ("source", "SOURCE")):
        assert f'org.opencontainers.image.{key}="${{{arg}}}"' in label
    assert "ENV CHARLM_BUILD_REVISION=${REVISION}" in serve
    # Metadata after the code: a new commit never invalidates the dependency or model layers.
    assert serve.index(label) > serve.index("COPY --from=code /opt/charlm /opt/charlm")


def test_make_models_trains_and_exports_the_three_shipped_models() -> None:
    res = run("make", "-n", "--no-print-directory", "models")
    assert res.returncode == 0, res.stderr
    for cfg, name in (
        ("names_wavenet", "names-wavenet"),
        ("names_gpt", "names-gpt"),
        ("shakespeare_gpt", "shakespeare-gpt"),
    ):
        assert f"-m training train --config training/configs/{cfg}.toml --out runs/{cfg}" in res.stdout
        assert f"-m training export runs/{cfg} --out models/{name} --force" in res.stdout


def test_the_deploy_manifests_run_an_image_make_docker_builds() -> None:
    """compose and the kustomization name tags `make docker` produces: none that no target builds."""
    res = run("make", "-n", "-B", "--no-print-directory", "docker")
    built = set(re.findall(r"-t (\S+)", res.stdout))
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    assert compose["services"]["charlm"]["image"] in built
    kust = yaml.safe_load((DEPLOY / "k8s" / "kustomization.yaml").read_text())
    (image,) = kust["images"]
    assert f"{image['newName']}:{image['newTag']}" in built
    deployment = yaml.safe_load((DEPLOY / "k8s" / "deployment.yaml").read_text())
    (ctr,) = deployment["spec"]["template"]["spec"]["containers"]
    assert ctr["image"] in built


def test_make_installs_build_with_the_locked_setuptools(tmp_path: Path) -> None:
    """The dev venv: the hashed build lock first, then charlm built with it (no isolated build, which would
    fetch an unpinned setuptools), constrained by dev.lock's bare pins."""
    venv = tmp_path / "venv"
    res = run("make", "-n", "-B", "--no-print-directory", f"{venv}/.dev-installed", f"VENV={venv}")
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    build = lines.index(f"{venv}/bin/python -m pip install --require-hashes -r requirements/build.lock")
    dev = lines.index(f"{venv}/bin/python -m pip install --no-build-isolation -e '.[dev]' -c {venv}/constraints.txt")
    assert build < dev
