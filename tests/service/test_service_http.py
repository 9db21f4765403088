"""The HTTP service end to end: a real server (LitServe, ONNX Runtime, the shipped models and one broken
folder) in a subprocess: liveness, readiness, docs, the model list, generation and batching. Streaming,
the error contract, deadlines and the other backends have their own modules (test_*_http.py).
"""

from __future__ import annotations

import concurrent.futures
import json
from pathlib import Path

import httpx
import pytest

from tests.support.http import CMPL, GEN, NAMES, SHAKESPEARE, WAVENET, metric
from tests.support.serving import MODELS, Server, descendants, running_server

SHIPPED = (NAMES, WAVENET, SHAKESPEARE)


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped models plus one broken folder, which must be left out and reported."""
    root = tmp_path_factory.mktemp("models")
    for name in SHIPPED:
        assert (MODELS / name / "manifest.json").is_file(), f"shipped model {name} missing in {MODELS}"
        (root / name).symlink_to(MODELS / name)
    broken = root / "broken-model"
    broken.mkdir()
    (broken / "manifest.json").write_text('{"schema_version": 1, "name": "broken-model"}')
    return root


@pytest.fixture(scope="module")
def server(models_dir: Path):
    with running_server(models=models_dir) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server: Server):
    with httpx.Client(base_url=server.base_url, timeout=60) as c:
        yield c


# ----- liveness, readiness, docs, models -----


def test_startup_is_fast(server: Server) -> None:
    assert server.ready_after is not None and server.ready_after < 10.0, server.ready_after


def test_health_and_ready(client: httpx.Client) -> None:
    health = client.get("/health")
    assert health.status_code == 200 and health.json() == {"status": "ok"}
    ready = client.get("/ready")
    assert ready.status_code == 200
    body = ready.json()
    assert body["status"] == "ready" and body["reason"] is None
    assert sorted(body["models"]) == sorted(SHIPPED)
    assert "broken-model" in body["failed"] and body["failed"]["broken-model"]
    assert set(body["workers"]) == {"worker_0"}  # one pool serves both routes
    assert all(w["status"] == "ready" and w["last_step_age_s"] < 5 for w in body["workers"].values())


def test_no_torch_anywhere_in_the_onnx_server(server: Server, client: httpx.Client) -> None:
    body = client.get("/ready").json()
    assert body["backend"] == "onnx"
    assert body["api_server"]["torch_imported"] is False
    assert all(w["torch_imported"] is False for w in body["workers"].values())
    # And from the outside, for every process of the server: no libtorch mapped into memory.
    pids = [server.proc.pid, *descendants(server.proc.pid)]
    assert len(pids) >= 4  # main, manager, API server, worker (+ multiprocessing's resource tracker)
    assert len(server.worker_pids()) == 1
    for pid in pids:
        maps = Path(f"/proc/{pid}/maps").read_text()
        assert "libtorch" not in maps, f"pid {pid} has torch loaded"


def test_docs_and_openapi(client: httpx.Client) -> None:
    assert client.get("/docs").status_code == 200
    spec = client.get("/openapi.json").json()
    assert {GEN, CMPL, "/v1/models", "/ready", "/health", "/metrics"} <= set(spec["paths"])
    assert "prompt" in spec["paths"][GEN]["post"]["description"]  # the text-includes-prompt choice
    assert "GenerateRequest" in json.dumps(spec["paths"][GEN]["post"]["requestBody"])


def test_models_list(client: httpx.Client) -> None:
    body = client.get("/v1/models").json()
    assert body["object"] == "list"
    cards = {card["id"]: card for card in body["data"]}
    assert set(cards) == set(SHIPPED)
    for card in cards.values():
        assert card["object"] == "model" and card["owned_by"] == "charlm"
        assert isinstance(card["created"], int)
        for key in ("arch", "n_params", "vocab_size", "block_size", "format", "test_loss", "backend"):
            assert key in card
        assert card["backend"] == "onnx"
    assert cards[NAMES]["format"] == "lines" and cards[SHAKESPEARE]["format"] == "stream"


# ----- generation -----


def test_generate_shape_and_text_includes_prompt(client: httpx.Client) -> None:
    r = client.post(GEN, json={"model": NAMES, "prompt": "ka", "n": 3, "seed": 7})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["id"].startswith("gen-") and body["model"] == NAMES
    assert [c["index"] for c in body["choices"]] == [0, 1, 2]
    for choice in body["choices"]:
        assert choice["text"].startswith("ka")
        assert "." not in choice["text"]  # the end marker is never part of the text
        assert choice["finish_reason"] in ("stop", "length")
    assert body["usage"]["prompt_tokens"] == 2
    assert body["usage"]["completion_tokens"] >= 3
    timing = body["timing"]
    assert 0 <= timing["queue_ms"] <= timing["first_token_ms"] <= timing["total_ms"]


def test_lines_default_runs_to_the_end_marker_capped_at_64(client: httpx.Client) -> None:
    r = client.post(GEN, json={"model": WAVENET, "n": 16, "seed": 1})
    for choice in r.json()["choices"]:
        if choice["finish_reason"] == "length":
            assert len(choice["text"]) == 64
        else:
            assert len(choice["text"]) < 64


def test_stream_model_default_and_max_new_tokens(client: httpx.Client) -> None:
    r = client.post(GEN, json={"model": SHAKESPEARE, "prompt": "ROMEO:", "max_new_tokens": 20, "seed": 3})
    choice = r.json()["choices"][0]
    assert choice["finish_reason"] == "length" and len(choice["text"]) == len("ROMEO:") + 20
    assert r.json()["usage"]["completion_tokens"] == 20
    r = client.post(GEN, json={"model": SHAKESPEARE, "seed": 3})
    assert r.json()["usage"]["completion_tokens"] == 256


def test_stop_strings_end_the_text(client: httpx.Client) -> None:
    base = client.post(GEN, json={"model": SHAKESPEARE, "max_new_tokens": 200, "temperature": 0}).json()
    text = base["choices"][0]["text"]
    stop = text[40:42]
    r = client.post(GEN, json={"model": SHAKESPEARE, "max_new_tokens": 200, "temperature": 0, "stop": [stop]})
    choice = r.json()["choices"][0]
    assert choice["finish_reason"] == "stop"
    assert choice["text"] == text[: text.index(stop)]


def test_completions_shape_echo_and_multiple_prompts(client: httpx.Client) -> None:
    r = client.post(CMPL, json={"model": NAMES, "prompt": "ka", "n": 2, "seed": 7, "user": "ignored"})
    body = r.json()
    assert r.status_code == 200 and body["object"] == "text_completion"
    assert body["id"].startswith("cmpl-") and isinstance(body["created"], int)
    native = client.post(GEN, json={"model": NAMES, "prompt": "ka", "n": 2, "seed": 7}).json()
    for c, n in zip(body["choices"], native["choices"], strict=True):
        # OpenAI's fields, plus the `novel` extension on a whole names-gpt sample (the model has its data's hashes)
        extension = {"novel"} if c["finish_reason"] == "stop" else set()
        assert set(c) == {"text", "index", "logprobs", "finish_reason", *extension} and c["logprobs"] is None
        assert "ka" + c["text"] == n["text"]  # only the completion, same seed -> same sample
        assert c.get("novel") == n.get("novel")
    usage = body["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    echo = client.post(CMPL, json={"model": NAMES, "prompt": "ka", "n": 2, "seed": 7, "echo": True}).json()
    assert [c["text"] for c in echo["choices"]] == [n["text"] for n in native["choices"]]
    multi = client.post(CMPL, json={"model": NAMES, "prompt": ["a", "b"], "n": 2, "max_tokens": 3}).json()
    assert [c["index"] for c in multi["choices"]] == [0, 1, 2, 3]


def test_seeded_requests_reproducible_alone_and_in_a_batch(client: httpx.Client, server: Server) -> None:
    request = {"model": NAMES, "prompt": "m", "n": 2, "seed": 1234, "temperature": 0.9, "top_k": 20}
    alone = client.post(GEN, json=request).json()["choices"]
    assert client.post(GEN, json=request).json()["choices"] == alone
    others = [{"model": NAMES, "n": 3, "seed": i} for i in range(15)]
    with concurrent.futures.ThreadPoolExecutor(16) as pool, httpx.Client(base_url=server.base_url) as c:
        futures = [pool.submit(c.post, GEN, json=body, timeout=60) for body in [*others[:8], request, *others[8:]]]
        results = [f.result() for f in futures]
    assert all(r.status_code == 200 for r in results)
    assert results[8].json()["choices"] == alone


def test_greedy_is_deterministic(client: httpx.Client) -> None:
    body = {"model": SHAKESPEARE, "prompt": "The ", "temperature": 0, "max_new_tokens": 30}
    first = client.post(GEN, json=body).json()["choices"][0]["text"]
    assert client.post(GEN, json=body).json()["choices"][0]["text"] == first


def test_n_runs_as_one_batch(client: httpx.Client) -> None:
    before = client.get("/metrics").text
    r = client.post(GEN, json={"model": WAVENET, "n": 7, "seed": 1})
    assert len(r.json()["choices"]) == 7

    def delta(name: str, **labels: str) -> float:
        return metric(after, name, model=WAVENET, **labels) - metric(before, name, model=WAVENET, **labels)

    after = client.get("/metrics").text
    # Every generated token came out of an engine step (one observation per step, of its live sequences) ...
    assert delta("charlm_batch_size_sum") == r.json()["usage"]["completion_tokens"]
    # ... and the 7 choices ran in the same steps: the first ones held all 7, not 7 steps of one.
    assert delta("charlm_batch_size_bucket", le="8.0") - delta("charlm_batch_size_bucket", le="4.0") >= 1
    assert delta("charlm_batch_size_count") < r.json()["usage"]["completion_tokens"]


def test_32_concurrent_requests_succeed_and_are_batched(server: Server, client: httpx.Client) -> None:
    before = client.get("/metrics").text
    bodies = [{"model": NAMES, "prompt": "a", "seed": i, "stream": i % 4 == 0} for i in range(32)]
    with concurrent.futures.ThreadPoolExecutor(32) as pool, httpx.Client(base_url=server.base_url) as c:
        results = list(pool.map(lambda b: c.post(GEN, json=b, timeout=60), bodies))
    assert [r.status_code for r in results] == [200] * 32
    after = client.get("/metrics").text
    steps = metric(after, "charlm_batch_size_count", model=NAMES) - metric(
        before, "charlm_batch_size_count", model=NAMES
    )
    singles = metric(after, "charlm_batch_size_bucket", model=NAMES, le="1.0") - metric(
        before, "charlm_batch_size_bucket", model=NAMES, le="1.0"
    )
    sequences = metric(after, "charlm_batch_size_sum", model=NAMES) - metric(
        before, "charlm_batch_size_sum", model=NAMES
    )
    # Requests joined each other's steps: more sequence-steps than steps, and steps with several.
    assert sequences > steps and steps - singles >= 1, (steps, singles, sequences)


# ----- streaming -----


# ----- the error contract -----


def test_unknown_model_lists_available(client: httpx.Client) -> None:
    message = client.post(GEN, json={"model": "nope"}).json()["error"]["message"]
    assert all(name in message for name in SHIPPED) and "broken-model" not in message


# ----- metrics -----


# ----- the CLI uses the same engine -----


# ----- TorchScript backend -----


# ----- limits: bounded queue (503), deadline (504), cancellation -----
