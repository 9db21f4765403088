"""Streaming through the real server: Server-Sent Events on the native and OpenAI routes, and errors before a
stream starts as plain JSON."""

from __future__ import annotations

import json

import httpx

from tests.support.http import CMPL, GEN, NAMES, SHAKESPEARE, sse


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


def test_stream_errors_before_the_stream_are_plain_json(client: httpx.Client) -> None:
    r = client.post(GEN, json={"model": NAMES, "prompt": "K", "stream": True})
    assert r.status_code == 400 and r.headers["content-type"].startswith("application/json")
    assert r.json()["error"]["param"] == "prompt"
