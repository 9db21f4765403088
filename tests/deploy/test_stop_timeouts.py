"""Every way of running the image gives the service's drain the time it needs before the SIGKILL: the README's
`docker run` / `docker stop` examples, compose's stop_grace_period, deploy/smoke.sh's `docker stop` (k8s:
tests/deploy/test_k8s.py). Docker's default stop timeout (10 s) would cut a 20 s drain: exit 137, requests lost."""

from __future__ import annotations

import re

from tests.support.deploy import DEPLOY, ROOT, load_yaml

MARGIN_S = 5  # the last request's answer and the processes' exit after the drain


def default_drain() -> float:
    from service.settings import Settings

    return Settings.model_fields["drain_timeout"].default


def docker_section() -> str:
    text = (ROOT / "README.md").read_text()
    return text[text.index("## Docker\n") : text.index("\n## ", text.index("## Docker\n") + 1)]


def test_readme_docker_examples_wait_for_the_drain() -> None:
    section = docker_section()
    runs = re.findall(r"^docker run .*$", section, re.MULTILINE)
    stops = re.findall(r"^docker stop .*$", section, re.MULTILINE)
    assert runs and stops
    for line in runs:
        m = re.search(r"--stop-timeout (\d+)", line)
        assert m and int(m[1]) >= default_drain() + MARGIN_S, line
    for line in stops:
        m = re.search(r"-t (\d+)", line)
        assert m and int(m[1]) >= default_drain() + MARGIN_S, line


def test_compose_sets_the_drain_and_a_grace_period_that_covers_it() -> None:
    charlm = load_yaml(DEPLOY / "docker-compose.yml")["services"]["charlm"]
    m = re.fullmatch(r"\$\{CHARLM_DRAIN_TIMEOUT:-(\d+)\}", charlm["environment"]["CHARLM_DRAIN_TIMEOUT"])
    assert m, "CHARLM_DRAIN_TIMEOUT is set explicitly, with a default"
    grace = int(charlm["stop_grace_period"].removesuffix("s"))
    assert grace >= int(m[1]) + MARGIN_S


def test_smoke_stops_the_container_after_the_drain() -> None:
    stops = re.findall(r"docker stop -t (\d+)", (DEPLOY / "smoke.sh").read_text())
    assert stops and all(int(t) >= default_drain() + MARGIN_S for t in stops)
