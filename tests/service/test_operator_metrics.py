"""The metrics an operator of vLLM or TGI looks for, on the real server: what it runs (version and git
revision), running vs waiting sequences and slot occupancy per model, prompt tokens, choices by finish
reason, and the model label of a request refused by the schema (kept when it names a served model)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

import service
from tests.support.deploy import checkout_revision
from tests.support.serving import ServerProcess, start_server

SLOTS = 2
LONG = "shakespeare-gpt"


@pytest.fixture(scope="module")
def srv() -> Iterator[ServerProcess]:
    server = start_server("--slots", str(SLOTS))
    try:
        yield server
    finally:
        server.stop()
        server.remove_log()


def samples(srv: ServerProcess) -> dict[tuple[str, frozenset], float]:
    """(sample name, its labels) -> value, from the server's /metrics."""
    text = httpx.get(srv.url("/metrics"), timeout=10).text
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }


def value(srv: ServerProcess, name: str, **labels: str) -> float:
    return samples(srv).get((name, frozenset(labels.items())), 0.0)


def wait_for(check: Callable[[], bool], timeout: float = 20.0) -> None:
    end = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.05)


def test_build_info_names_the_version_and_the_git_revision(srv: ServerProcess) -> None:
    (labels,) = [dict(lb) for (name, lb), v in samples(srv).items() if name == "charlm_build_info" and v == 1]
    revision = checkout_revision()
    assert labels == {"version": service.__version__, "revision": revision}
    assert len(revision.removesuffix("-dirty")) == 40


def test_the_image_revision_wins_over_the_checkout(monkeypatch: pytest.MonkeyPatch) -> None:
    from service import metrics

    monkeypatch.setenv(metrics.REVISION_ENV, "0123abc")
    assert metrics.build_revision() == "0123abc"


def test_slot_gauges_show_running_and_waiting_sequences(srv: ServerProcess) -> None:
    """n=4 on a model with 2 slots: 2 run and 2 wait; when the client leaves, both go back to 0."""
    wait_for(lambda: value(srv, "charlm_slots", model=LONG) == SLOTS)
    assert value(srv, "charlm_sequences_running", model=LONG) == 0
    started, leave = threading.Event(), threading.Event()

    def stream() -> None:
        body = {"model": LONG, "prompt": "A", "n": 4, "max_tokens": 2048, "stream": True, "ignore_eos": True}
        with httpx.stream("POST", srv.url("/v1/completions"), json=body, timeout=60) as reply:
            for _ in reply.iter_lines():
                started.set()
                if leave.is_set():
                    return

    thread = threading.Thread(target=stream, daemon=True)
    thread.start()
    try:
        assert started.wait(30)
        wait_for(
            lambda: (
                (
                    value(srv, "charlm_sequences_running", model=LONG),
                    value(srv, "charlm_sequences_waiting", model=LONG),
                    value(srv, "charlm_slot_occupancy_ratio", model=LONG),
                )
                == (2, 2, 1.0)
            )
        )
        assert value(srv, "charlm_sequences_running", model="names-gpt") == 0
    finally:
        leave.set()
        thread.join(30)
    wait_for(
        lambda: (
            (
                value(srv, "charlm_sequences_running", model=LONG),
                value(srv, "charlm_sequences_waiting", model=LONG),
                value(srv, "charlm_slot_occupancy_ratio", model=LONG),
            )
            == (0, 0, 0)
        )
    )


def test_prompt_tokens_and_choices_by_finish_reason(srv: ServerProcess) -> None:
    before = samples(srv)
    body = {"model": "names-gpt", "prompt": "ma", "n": 6, "max_tokens": 3, "seed": 7}
    reply = httpx.post(srv.url("/v1/completions"), json=body, timeout=30)
    assert reply.status_code == 200, reply.text
    reasons = Counter(c["finish_reason"] for c in reply.json()["choices"])

    def grew(name: str, **labels: str) -> float:
        key = (name, frozenset({"model": "names-gpt", **labels}.items()))
        return samples(srv).get(key, 0.0) - before.get(key, 0.0)

    wait_for(lambda: grew("charlm_prompt_tokens_total") > 0)
    assert grew("charlm_prompt_tokens_total") == reply.json()["usage"]["prompt_tokens"]
    for reason in ("stop", "length"):
        assert grew("charlm_choices_finished_total", finish_reason=reason) == reasons[reason]
    assert sum(reasons.values()) == 6


def test_a_schema_level_400_keeps_the_model_label(srv: ServerProcess) -> None:
    """n=0 is refused before the handler runs: still counted under the model it names, when served."""
    route = "/v1/completions"
    stranger = "nope-" + uuid.uuid4().hex
    for model in ("names-gpt", stranger):
        reply = httpx.post(srv.url(route), json={"model": model, "prompt": "a", "n": 0}, timeout=30)
        assert reply.status_code == 400, reply.text
    for bad in (b"{not json", b"[" * 5000, b'{"model": 3, "n": 0}'):
        reply = httpx.post(srv.url(route), content=bad, headers={"content-type": "application/json"}, timeout=30)
        assert reply.status_code == 400, reply.text
    got = samples(srv)
    assert (
        got[("charlm_requests_total", frozenset({"model": "names-gpt", "route": route, "status": "400"}.items()))] == 1
    )
    assert got[("charlm_requests_total", frozenset({"model": "none", "route": route, "status": "400"}.items()))] == 4
    assert not [key for key in got if stranger in str(key)]  # a client cannot mint label values


def test_a_dead_workers_slot_gauges_leave_with_it(tmp_path: Path) -> None:
    """A process (a worker that crashed) sets its gauges and dies; the next render leaves them out, while a
    live process's values stay."""
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    setter = "from service import metrics; metrics.observe_slots(lambda: {'m': (%d, 1, 4)}, force=True)"
    subprocess.run([sys.executable, "-c", setter % 3], env=env, check=True, timeout=60)  # exits: dead
    live = subprocess.Popen(
        [sys.executable, "-c", setter % 2 + "; print('set', flush=True); import time; time.sleep(60)"],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert live.stdout is not None and live.stdout.readline().strip() == "set"
        render = "from service import metrics; print(metrics.render()[0].decode())"
        out = subprocess.run([sys.executable, "-c", render], env=env, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        got = {
            (s.name, s.labels.get("model")): s.value
            for f in text_string_to_metric_families(out.stdout)
            for s in f.samples
        }
        assert got[("charlm_sequences_running", "m")] == 2  # not 2 + 3
        assert got[("charlm_slots", "m")] == 4 and got[("charlm_slot_occupancy_ratio", "m")] == 0.5
    finally:
        live.kill()
        live.wait()
