"""The official openai client, unmodified, against /v1 of a real server: streamed and not."""

from __future__ import annotations

import openai
import pytest
from openai import OpenAI

from tests.support.serving import ServerProcess

NAMES = "names-gpt"
SHAKESPEARE = "shakespeare-gpt"


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> OpenAI:
    """The openai client against conftest's `server` (this module's own `client`)."""
    return OpenAI(base_url=f"http://127.0.0.1:{server.port}/v1", api_key="x", max_retries=0, timeout=60)


def test_models_list(client: OpenAI) -> None:
    ids = {m.id for m in client.models.list()}
    assert {NAMES, SHAKESPEARE} <= ids


def test_completion(client: OpenAI) -> None:
    resp = client.completions.create(model=NAMES, prompt="ka", n=3, seed=42, max_tokens=20, user="someone")
    assert resp.object == "text_completion" and resp.model == NAMES and resp.id.startswith("cmpl-")
    assert [c.index for c in resp.choices] == [0, 1, 2]
    for choice in resp.choices:
        assert choice.finish_reason in ("stop", "length") and choice.logprobs is None
        assert "." not in choice.text
    assert resp.usage is not None
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens
    again = client.completions.create(model=NAMES, prompt="ka", n=3, seed=42, max_tokens=20)
    assert [c.text for c in again.choices] == [c.text for c in resp.choices]


def test_completion_streamed_matches_non_streamed(client: OpenAI) -> None:
    kwargs = {"model": SHAKESPEARE, "prompt": "ROMEO:", "n": 2, "seed": 9, "max_tokens": 50, "stop": ["\n\n"]}
    plain = client.completions.create(**kwargs)
    texts = ["", ""]
    finish: dict[int, str] = {}
    usage = None
    chunks = 0
    for chunk in client.completions.create(stream=True, stream_options={"include_usage": True}, **kwargs):
        chunks += 1
        assert chunk.object == "text_completion"
        for choice in chunk.choices:
            texts[choice.index] += choice.text
            if choice.finish_reason:
                finish[choice.index] = choice.finish_reason
        if chunk.usage is not None:
            usage = chunk.usage
    assert chunks > 2
    assert texts == [c.text for c in plain.choices]
    assert finish == {c.index: c.finish_reason for c in plain.choices}
    assert usage == plain.usage


def test_echo_and_extra_body(client: OpenAI) -> None:
    resp = client.completions.create(
        model=NAMES, prompt="mar", echo=True, temperature=0, max_tokens=10, extra_body={"top_k": 1}
    )
    assert resp.choices[0].text.startswith("mar")


def test_errors_are_typed(client: OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as missing:
        client.completions.create(model="no-such-model", prompt="a")
    assert NAMES in missing.value.message
    with pytest.raises(openai.BadRequestError) as bad:
        client.completions.create(model=NAMES, prompt="a", temperature=-1)
    assert bad.value.body["param"] == "temperature"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model=NAMES, prompt="a", logprobs=999)  # over the vocabulary
    with pytest.raises(openai.BadRequestError) as chars:
        client.completions.create(model=NAMES, prompt="K!", stream=True)
    assert "'K'" in chars.value.message
