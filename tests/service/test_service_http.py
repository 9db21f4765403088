"""The HTTP service end to end: a real server (LitServe, ONNX Runtime, shipped models) in a subprocess.

One server per concern, module-scoped: the main ONNX server (every route, errors, metrics, batching),
a TorchScript server (same greedy text as ONNX) and a small-limits server (503, 504, cancellation).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.serving import MODELS, REPO, Server, descendants, running_server

GEN = "/v1/generate"
CMPL = "/v1/completions"
NAMES = "names-gpt"
WAVENET = "names-wavenet"
SHAKESPEARE = "shakespeare-gpt"
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


def sse(response: httpx.Response) -> list[str]:
    """The data payloads of an SSE body, in order (asserting the framing on the way)."""
    body = response.text
    assert body.endswith("\n\n"), "every event ends with a blank line"
    events = []
    for block in body.strip("\n").split("\n\n"):
        lines = block.split("\n")
        assert all(line.startswith("data: ") for line in lines), block
        events.append("\n".join(line[len("data: ") :] for line in lines))
    return events


def metric(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels`."""
    total = 0.0
    for line in text.splitlines():
        m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)$", line)
        if not m or m.group(1) != name:
            continue
        got = dict(re.findall(r'(\w+)="([^"]*)"', m.group(3) or ""))
        if all(got.get(k) == v for k, v in labels.items()):
            total += float(m.group(4))
    return total


def wait_for_metric(server: Server, name: str, predicate, timeout: float = 5.0, **labels: str) -> float:  # type: ignore[no-untyped-def]
    """Poll /metrics until predicate(value of name{labels}) holds; the value."""
    deadline = time.monotonic() + timeout
    while True:
        value = metric(httpx.get(server.url("/metrics")).text, name, **labels)
        if predicate(value):
            return value
        assert time.monotonic() < deadline, f"{name}{labels} = {value}"
        time.sleep(0.1)


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


def test_generate_stream_sse(client: httpx.Client) -> None:
    body = {"model": NAMES, "prompt": "ka", "n": 3, "seed": 11}
    plain = client.post(GEN, json=body).json()
    r = client.post(GEN, json={**body, "stream": True})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    events = sse(r)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    final = chunks.pop()
    texts = [""] * 3
    for chunk in chunks:
        assert chunk["id"] == final["id"] and len(chunk["choices"]) == 1
        choice = chunk["choices"][0]
        assert choice["finish_reason"] is None
        texts[choice["index"]] += choice["text"]
    assert texts == [c["text"] for c in plain["choices"]]
    assert [c["finish_reason"] for c in final["choices"]] == [c["finish_reason"] for c in plain["choices"]]
    assert final["usage"] == plain["usage"]
    assert set(final["timing"]) == {"queue_ms", "first_token_ms", "total_ms"}


def test_completions_stream_sse(client: httpx.Client) -> None:
    body = {"model": SHAKESPEARE, "prompt": "To be", "n": 2, "seed": 5, "max_tokens": 40}
    plain = client.post(CMPL, json=body).json()
    r = client.post(CMPL, json={**body, "stream": True, "stream_options": {"include_usage": True}})
    assert r.headers["content-type"].startswith("text/event-stream")
    events = sse(r)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    usage = chunks.pop()  # OpenAI's usage chunk: no choices
    final = chunks.pop()
    assert usage["choices"] == [] and all(c["usage"] is None for c in [*chunks, final])
    texts = ["", ""]
    for chunk in chunks:
        assert chunk["object"] == "text_completion" and chunk["model"] == SHAKESPEARE
        choice = chunk["choices"][0]
        assert choice["logprobs"] is None and choice["finish_reason"] is None
        texts[choice["index"]] += choice["text"]
    assert texts == [c["text"] for c in plain["choices"]]
    assert [c["finish_reason"] for c in final["choices"]] == ["length", "length"]
    assert usage["usage"] == plain["usage"] and usage["usage"]["completion_tokens"] == 80


LONG = {"model": SHAKESPEARE, "n": 16, "max_new_tokens": 2048, "seed": 1}  # 32,768 tokens: the cap


def test_client_disconnect_cancels_the_request(server: Server) -> None:
    def cancelled() -> float:
        return metric(httpx.get(server.url("/metrics")).text, "charlm_requests_cancelled_total", model=SHAKESPEARE)

    before = cancelled()
    long = {**LONG, "n": 16, "max_new_tokens": 500}  # admitted: it fits the 30 s timeout
    with pytest.raises(httpx.ReadTimeout):  # the client gives up waiting and closes the connection
        httpx.post(server.url(GEN), json=long, timeout=httpx.Timeout(30, read=0.5))
    wait_for_metric(server, "charlm_requests_cancelled_total", lambda v: v >= before + 1, model=SHAKESPEARE)
    with httpx.stream("POST", server.url(GEN), json={**long, "stream": True}, timeout=30) as r:
        assert r.status_code == 200
        next(r.iter_bytes())  # the stream is flowing; now hang up
    wait_for_metric(server, "charlm_requests_cancelled_total", lambda v: v >= before + 2, model=SHAKESPEARE)
    wait_for_metric(server, "charlm_requests_in_flight", lambda v: v == 0)


def test_stream_errors_before_the_stream_are_plain_json(client: httpx.Client) -> None:
    r = client.post(GEN, json={"model": NAMES, "prompt": "K", "stream": True})
    assert r.status_code == 400 and r.headers["content-type"].startswith("application/json")
    assert r.json()["error"]["param"] == "prompt"


# ----- the error contract -----

ERROR_ROWS = [
    # (route, body, status, param, code)
    (GEN, {"model": NAMES, "temperature": -0.5}, 400, "temperature", "invalid_value"),
    (GEN, {"model": NAMES, "top_p": 0}, 400, "top_p", "invalid_value"),
    (GEN, {"model": NAMES, "top_p": 1.5}, 400, "top_p", "invalid_value"),
    (GEN, {"model": NAMES, "top_k": 0}, 400, "top_k", "invalid_value"),
    (GEN, {"model": NAMES, "n": 0}, 400, "n", "invalid_value"),
    (GEN, {"model": NAMES, "n": 65}, 400, "n", "invalid_value"),
    (GEN, {"model": NAMES, "max_new_tokens": 2049}, 400, "max_new_tokens", "invalid_value"),
    (GEN, {"model": NAMES, "stop": ["a", "b", "c", "d", "e"]}, 400, "stop", "invalid_value"),
    (GEN, {"model": NAMES, "seed": "x"}, 400, "seed", "invalid_value"),
    (GEN, {"model": NAMES, "stream": "yes"}, 400, "stream", "invalid_value"),
    (GEN, {"prompt": "a"}, 400, "model", "missing_required_parameter"),
    (GEN, {"model": NAMES, "max_tokens": 5}, 400, "max_tokens", "unknown_parameter"),
    (GEN, {"model": NAMES, "prompt": "Ka1"}, 400, "prompt", "invalid_prompt"),
    (GEN, {"model": NAMES, "prompt": "a.b"}, 400, "prompt", "invalid_prompt"),
    (GEN, {"model": "no-such-model"}, 404, "model", "model_not_found"),
    (CMPL, {"model": NAMES, "temperature": -1}, 400, "temperature", "invalid_value"),
    (CMPL, {"model": NAMES, "logprobs": 28}, 400, "logprobs", "invalid_value"),
    (CMPL, {"model": NAMES, "n": 3, "best_of": 2}, 400, "best_of", "invalid_value"),
    (CMPL, {"model": NAMES, "presence_penalty": 2.5}, 400, "presence_penalty", "invalid_value"),
    (CMPL, {"model": NAMES, "logit_bias": {"27": 2}}, 400, "logit_bias", "invalid_value"),
    (CMPL, {"model": NAMES, "suffix": "x"}, 400, "suffix", "unsupported_parameter"),
    (CMPL, {"model": NAMES, "prompt": [1, 99]}, 400, "prompt", "invalid_value"),
    (
        "/v1/chat/completions",
        {"model": NAMES, "messages": [{"role": "user", "content": "K"}]},
        400,
        "messages[0].content",
        "invalid_prompt",
    ),
    (CMPL, {"model": NAMES, "prompt": "A"}, 400, "prompt", "invalid_prompt"),
    (CMPL, {"model": "no-such-model"}, 404, "model", "model_not_found"),
]


@pytest.mark.parametrize(("route", "body", "status", "param", "code"), ERROR_ROWS)
def test_error_table(client: httpx.Client, route: str, body: dict, status: int, param: str, code: str) -> None:
    r = client.post(route, json=body)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == param and error["code"] == code and error["message"]
    assert error["type"] == "invalid_request_error"


def test_defaults_of_unsupported_openai_fields_are_accepted(client: httpx.Client) -> None:
    body = {
        "model": NAMES,
        "logprobs": None,
        "echo": False,
        "best_of": 1,
        "presence_penalty": 0,
        "frequency_penalty": 0.0,
        "logit_bias": None,
        "suffix": None,
        "stream_options": None,
        "max_tokens": 3,
    }
    assert client.post(CMPL, json=body).status_code == 200


def test_unknown_model_lists_available(client: httpx.Client) -> None:
    message = client.post(GEN, json={"model": "nope"}).json()["error"]["message"]
    assert all(name in message for name in SHIPPED) and "broken-model" not in message


def test_prompt_error_names_the_characters(client: httpx.Client) -> None:
    message = client.post(GEN, json={"model": NAMES, "prompt": "aXb!"}).json()["error"]["message"]
    assert "'X'" in message and "'!'" in message


@pytest.mark.parametrize(
    ("content", "headers", "code"),
    [
        (b'{"model": "names-gpt",', {"content-type": "application/json"}, "invalid_json"),
        (b"[1, 2]", {"content-type": "application/json"}, "invalid_body"),
        (b'{"model": "names-gpt"}', {"content-type": "text/plain"}, "invalid_body"),
        (b"", {"content-type": "application/json"}, "invalid_body"),
    ],
)
def test_malformed_bodies_are_400(client: httpx.Client, content: bytes, headers: dict, code: str) -> None:
    for route in (GEN, CMPL):
        r = client.post(route, content=content, headers=headers)
        assert r.status_code == 400 and r.json()["error"]["code"] == code, r.text


def test_body_over_64_kib_is_413(client: httpx.Client) -> None:
    body = json.dumps({"model": NAMES, "prompt": "a" * (64 * 1024)}).encode()
    for route in (GEN, CMPL):
        r = client.post(route, content=body, headers={"content-type": "application/json"})
        assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
    just_under = json.dumps({"model": NAMES, "prompt": "a" * 60000, "max_new_tokens": 1}).encode()
    assert client.post(GEN, content=just_under, headers={"content-type": "application/json"}).status_code == 200


def test_unknown_routes_and_methods_use_the_contract(client: httpx.Client) -> None:
    r = client.get("/v1/nothing")
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"
    r = client.get(GEN)
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"


# ----- metrics -----


def test_metrics_after_traffic_pass_promtool(client: httpx.Client) -> None:
    client.post(GEN, json={"model": NAMES, "seed": 1})
    client.post(CMPL, json={"model": SHAKESPEARE, "max_tokens": 5, "stream": True})
    client.post(GEN, json={"model": NAMES, "temperature": -1})
    r = client.get("/metrics", follow_redirects=False)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    for name in (
        "charlm_requests_total",
        "charlm_request_duration_seconds_bucket",
        "charlm_time_to_first_token_seconds_bucket",
        "charlm_queue_wait_seconds_bucket",
        "charlm_generated_tokens_total",
        "charlm_batch_size_bucket",
        "charlm_requests_in_flight",
        "charlm_model_info",
        "charlm_time_per_output_token_seconds_bucket",
        "charlm_build_info",
    ):
        assert name in text, name
    assert metric(text, "charlm_requests_total", model=NAMES, route=GEN, status="200") >= 1
    assert metric(text, "charlm_requests_total", route=GEN, status="400") >= 1
    assert metric(text, "charlm_requests_total", model=SHAKESPEARE, route=CMPL, status="200") >= 1
    assert metric(text, "charlm_model_info", model=NAMES, backend="onnx") == 1
    assert 'le="0.0001"' in text and 'le="30.0"' in text
    check = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr


# ----- the CLI uses the same engine -----


def test_cli_generate_matches_http(client: httpx.Client, models_dir: Path) -> None:
    http = client.post(GEN, json={"model": NAMES, "prompt": "ka", "n": 4, "seed": 99}).json()
    cmd = [sys.executable, "-m", "service", "generate", "--model", NAMES, "-n", "4", "--prompt", "ka"]
    out = subprocess.run([*cmd, "--seed", "99", "--models", str(models_dir)], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [c["text"] for c in http["choices"]]


# ----- TorchScript backend -----


@pytest.fixture(scope="module")
def ts_server(models_dir: Path):
    with running_server("--backend", "torchscript", models=models_dir) as srv:
        yield srv


def test_onnx_and_torchscript_give_the_same_greedy_text(client: httpx.Client, ts_server: Server) -> None:
    ready = httpx.get(ts_server.url("/ready")).json()
    assert ready["backend"] == "torchscript"
    assert all(w["torch_imported"] is True for w in ready["workers"].values())  # the flag is honest
    cases = [(NAMES, "ka"), (NAMES, ""), (WAVENET, "mar"), (SHAKESPEARE, "ROMEO:\n")]
    for model, prompt in cases:
        body = {"model": model, "prompt": prompt, "temperature": 0, "n": 2, "max_new_tokens": 60}
        onnx = client.post(GEN, json=body).json()
        ts = httpx.post(ts_server.url(GEN), json=body, timeout=60).json()
        assert [c["text"] for c in ts["choices"]] == [c["text"] for c in onnx["choices"]], model
        assert ts["usage"] == onnx["usage"]


# ----- limits: bounded queue (503), deadline (504), cancellation -----


@pytest.fixture(scope="module")
def tight_server(models_dir: Path):
    env = {"CHARLM_MAX_QUEUE": "2", "CHARLM_TIMEOUT": "1.5"}
    with running_server(models=models_dir, env=env) as srv:
        yield srv


@contextlib.contextmanager
def stopped_worker(srv: Server) -> Iterator[None]:
    """The worker stopped (SIGSTOP): admitted requests cannot finish, whatever admission estimated."""
    (worker,) = srv.worker_pids()
    os.kill(worker, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(worker, signal.SIGCONT)


def test_queue_full_is_503_with_retry_after_and_timeout_is_504(tight_server: Server) -> None:
    fits = {"model": SHAKESPEARE, "n": 2, "max_new_tokens": 20}  # admitted: it fits the 1.5 s timeout
    pool = concurrent.futures.ThreadPoolExecutor(2)
    with pool, httpx.Client(base_url=tight_server.base_url) as c, stopped_worker(tight_server):
        long = [pool.submit(c.post, GEN, json=fits, timeout=30) for _ in range(2)]
        time.sleep(0.5)  # both admitted: the queue (2) is full
        full = c.post(GEN, json={"model": NAMES}, timeout=30)
        assert full.status_code == 503, full.text
        assert full.headers["retry-after"] == "1"
        assert full.json()["error"]["code"] == "queue_full"
        timed_out = [f.result() for f in long]
    for r in timed_out:
        assert r.status_code == 504 and r.json()["error"]["type"] == "timeout_error"
    # ... and dropped by the worker once it runs again, not run:
    wait_for_metric(tight_server, "charlm_requests_cancelled_total", lambda v: v >= 2, model=SHAKESPEARE)
    ok = httpx.post(tight_server.url(GEN), json={"model": NAMES, "seed": 1}, timeout=30)
    assert ok.status_code == 200


def test_stream_past_its_deadline_ends_with_an_error_event(tight_server: Server) -> None:
    body = {"model": SHAKESPEARE, "max_new_tokens": 30, "stream": True}  # admitted: it fits 1.5 s
    with httpx.stream("POST", tight_server.url(GEN), json=body, timeout=30) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        with stopped_worker(tight_server):  # started; then the worker stops and the deadline passes
            events = [line[len("data: ") :] for line in r.iter_lines() if line.startswith("data: ")]
    assert "[DONE]" not in events
    last = json.loads(events[-1])
    assert last["error"]["code"] == "timeout" and last["error"]["type"] == "timeout_error"
    wait_for_metric(tight_server, "charlm_requests_in_flight", lambda v: v == 0)
