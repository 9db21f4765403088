"""Scoring and the OpenAI ecosystem against a real server on the shipped models: the test loss through
HTTP, logprobs/echo, models.retrieve, the usage chunk, chat and vLLM's benchmark request, all with the
unmodified `openai` client where a client exists."""

from __future__ import annotations

import math

import httpx
import pytest
from openai import OpenAI

from tests.support.serving import MODELS, ServerProcess
from training.verify import onnx_split_loss
from training.verify_http import http_split_loss

NAMES, WAVENET, SHAKESPEARE = "names-gpt", "names-wavenet", "shakespeare-gpt"


@pytest.fixture(scope="module")
def oai(server: ServerProcess) -> OpenAI:
    return OpenAI(base_url=f"http://127.0.0.1:{server.port}/v1", api_key="x", max_retries=0, timeout=60)


@pytest.mark.parametrize("model", [NAMES, WAVENET])
def test_test_loss_through_http_is_the_manifests(server: ServerProcess, model: str) -> None:
    """The check that cannot lie: the whole test split scored through /v1/completions (echo, logprobs)
    gives the manifest's test_loss. (Every model, whole splits: `python -m training verify --via URL`.)"""
    from contract import Manifest

    manifest = Manifest.load(MODELS / model)
    loss = http_split_loss(server.base_url, MODELS / model)
    assert abs(loss - manifest.metrics.test_loss) < 1e-3, (loss, manifest.metrics.test_loss)


@pytest.mark.parametrize("model", [NAMES, SHAKESPEARE])
def test_a_slice_scores_through_http_as_through_onnx(server: ServerProcess, model: str) -> None:
    """A slice of the split (the first 24 names, or 24 blocks of 128 characters) through HTTP gives
    what model.onnx alone gives on it, windowed as the manifest's test_loss."""
    part = http_split_loss(server.base_url, MODELS / model, limit=24)
    assert abs(part - onnx_split_loss(MODELS / model, limit=24)) < 1e-4


def test_completion_logprobs_with_echo(oai: OpenAI) -> None:
    resp = oai.completions.create(model=NAMES, prompt="emma", echo=True, max_tokens=0, logprobs=0)
    lp = resp.choices[0].logprobs
    assert resp.choices[0].text == "emma" and lp is not None and lp.tokens == list("emma")
    assert lp.text_offset == [0, 1, 2, 3] and all(v is not None and v < 0 for v in lp.token_logprobs or [])
    gen = oai.completions.create(model=SHAKESPEARE, prompt="ROMEO:", max_tokens=8, logprobs=3, seed=1, temperature=0.7)
    glp = gen.choices[0].logprobs
    assert glp is not None and "".join(glp.tokens or []) == gen.choices[0].text and len(glp.tokens or []) == 8
    assert all(len(t) in (3, 4) for t in glp.top_logprobs or [])
    # raw logprobs: the same text scores the same whatever the sampling settings
    again = oai.completions.create(
        model=SHAKESPEARE, prompt="ROMEO:" + gen.choices[0].text, echo=True, max_tokens=0, logprobs=0, temperature=0.1
    )
    tail = (again.choices[0].logprobs.token_logprobs or [])[-8:]  # type: ignore[union-attr]
    assert all(math.isclose(a, b, abs_tol=1e-5) for a, b in zip(tail, glp.token_logprobs or [], strict=True))


def test_models_retrieve(oai: OpenAI) -> None:
    card = oai.models.retrieve(NAMES)
    assert card.id == NAMES and card.object == "model"


def test_usage_chunk_as_openai_streams_it(oai: OpenAI) -> None:
    chunks = list(
        oai.completions.create(
            model=NAMES, prompt="a", max_tokens=10, stream=True, stream_options={"include_usage": True}, seed=2
        )
    )
    *body, last = chunks
    assert last.choices == [] and last.usage is not None and last.usage.prompt_tokens == 1
    assert all(c.usage is None for c in body)
    assert last.usage.completion_tokens >= 1
    no_usage = list(oai.completions.create(model=NAMES, prompt="a", max_tokens=3, stream=True))
    assert all(c.usage is None for c in no_usage)


def test_vllm_benchmark_request_shape(oai: OpenAI) -> None:
    """What vLLM's `bench serve` OpenAI client sends: repetition_penalty, ignore_eos, include_usage."""
    stream = oai.completions.create(
        model=NAMES,
        prompt="ma",
        max_tokens=40,
        temperature=0.0,
        stream=True,
        stream_options={"include_usage": True, "continuous_usage_stats": True},
        extra_body={"repetition_penalty": 1.0, "ignore_eos": True, "top_k": 1},
    )
    text, usage = "", None
    for chunk in stream:
        for c in chunk.choices:
            text += c.text
        usage = chunk.usage or usage
    assert usage is not None and usage.completion_tokens == 40  # ignore_eos: past the end marker


def test_chat(oai: OpenAI) -> None:
    resp = oai.chat.completions.create(
        model=SHAKESPEARE,
        messages=[{"role": "user", "name": "romeo", "content": "What light through yonder window breaks?"}],
        max_tokens=60,
        seed=3,
        logprobs=True,
        top_logprobs=2,
    )
    choice = resp.choices[0]
    assert choice.message.role == "assistant" and choice.message.content
    assert "\n\n" not in choice.message.content  # the reply ends with its speaker block
    assert choice.logprobs is not None and choice.logprobs.content
    pieces = [
        c.choices[0].delta.content or ""
        for c in oai.chat.completions.create(
            model=NAMES, messages=[{"role": "user", "content": "ka"}], stream=True, seed=4
        )
        if c.choices
    ]
    assert "".join(pieces) and "." not in "".join(pieces)


def test_tokenizer_routes_on_the_real_server(server: ServerProcess) -> None:
    info = httpx.get(server.url(f"/models/{SHAKESPEARE}/tokenizer_info")).json()
    assert info["vocab_size"] == 65 and info["model_max_length"] == 128
    ids = httpx.post(server.url(f"/models/{SHAKESPEARE}/tokenize"), json={"prompt": "To be"}).json()["tokens"]
    assert httpx.post(server.url("/detokenize"), json={"model": SHAKESPEARE, "tokens": ids}).json()["prompt"] == "To be"
