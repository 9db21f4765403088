"""The document's per-model request schemas (service.http.served_schemas) agree with what the server
takes: bodies the server accepts validate, bodies it refuses do not (in-process, fake engines)."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest

from service.http.served_schemas import name_pattern, text_pattern
from tests.support.fake_engine import FakeEngine, manifest, run

jsonschema = pytest.importorskip("jsonschema")  # schemathesis brings it


def _document(**app_kwargs: Any) -> dict[str, Any]:
    async def scenario(http: httpx.AsyncClient) -> dict[str, Any]:
        return (await http.get("/openapi.json")).json()

    return run(scenario, **app_kwargs)


def _validator(doc: dict[str, Any], component: str) -> Any:
    schema = {"$ref": f"#/components/schemas/{component}", "components": doc["components"]}
    return jsonschema.Draft202012Validator(schema)


def test_a_lines_model_s_token_ids_may_start_with_its_boundary_only() -> None:
    doc = _document()
    completions = _validator(doc, "CompletionRequest.names")
    assert completions.is_valid({"model": "names", "prompt": [0, 1, 2]})  # lm-eval's prefix token
    assert completions.is_valid({"model": "names", "prompt": [[0, 5], [3]]})
    assert not completions.is_valid({"model": "names", "prompt": [1, 0, 2]})  # the mark inside a prompt
    assert not completions.is_valid({"model": "names", "prompt": [1, 27]})  # outside the vocabulary
    assert not completions.is_valid({"model": "prose", "prompt": "a"})  # the variant of another model
    assert not completions.is_valid({"model": "names", "prompt": "a.b"})
    for path in ("/v1/completions", "/models/names/v1/completions"):  # the rules no schema can hold, in words
        assert "best_of >= n" in doc["paths"][path]["post"]["responses"]["400"]["description"], path


def test_logit_bias_keys_and_logprobs_are_bounded_by_the_vocabulary() -> None:
    generate = _validator(_document(), "GenerateRequest.prose")
    assert generate.is_valid({"model": "prose", "logit_bias": {"0": 1, "54": -1}, "logprobs": 55})
    assert not generate.is_valid({"model": "prose", "logit_bias": {"55": 1}})
    assert not generate.is_valid({"model": "prose", "logit_bias": {"01": 1}})
    assert not generate.is_valid({"model": "prose", "logprobs": 56})
    assert not generate.is_valid({"model": "prose", "novel_only": True})  # a stream model: nothing to compare


def test_chat_messages_per_model_format() -> None:
    doc = _document()
    prose, names = _validator(doc, "ChatRequest.prose"), _validator(doc, "ChatRequest.names")
    speaker = {"role": "assistant", "name": "romeo", "content": "Hi there"}
    assert prose.is_valid({"model": "prose", "messages": [speaker]})
    assert not prose.is_valid({"model": "prose", "messages": [{**speaker, "name": "r2"}]})  # "R2:" needs "2"
    system = {"role": "system", "content": "You write NAMES!"}  # not read by a lines model
    assert names.is_valid({"model": "names", "messages": [system, {"role": "user", "content": "ka"}]})
    assert not names.is_valid({"model": "names", "messages": [{"role": "user", "content": "Ka"}]})
    assert not names.is_valid({"model": "names", "messages": [{"role": "user", "content": "hi"}], "tools": [{}]})


def test_with_one_model_the_tokenizer_s_model_may_be_left_out() -> None:
    doc = _document(engines={"names": FakeEngine(manifest("names"))})
    tokenize = _validator(doc, "TokenizeRequest.names")
    assert tokenize.is_valid({"prompt": "ab."}) and tokenize.is_valid({"model": None, "prompt": "ab"})
    (info,) = doc["paths"]["/tokenizer_info"]["get"]["parameters"]
    assert info["required"] is False and info["schema"]["enum"] == ["names"]
    several = _document()
    assert not _validator(several, "TokenizeRequest.names").is_valid({"prompt": "ab"})
    assert several["paths"]["/tokenizer_info"]["get"]["parameters"][0]["required"] is True


def test_patterns_escape_every_character_that_is_not_a_letter_or_digit() -> None:
    m = manifest("odd", "stream").model_copy(update={"vocab": ["]", "^", "-", "\\", "a", "\n"]})
    pattern = re.compile(text_pattern(m))
    assert pattern.match("]^-\\a\n") and not pattern.match("b")
    assert re.compile(name_pattern(m)).match("A") is None  # "A" is not in this vocabulary


def test_a_boundary_that_is_not_id_0_is_refused_inside_a_prompt_too() -> None:
    last = manifest("last").model_copy(update={"vocab": [*"abc", "."], "boundary_token": 3})
    completions = _validator(_document(engines={"last": FakeEngine(last)}), "CompletionRequest.last")
    assert completions.is_valid({"model": "last", "prompt": [3, 0, 1]})
    assert not completions.is_valid({"model": "last", "prompt": [0, 3]})
    assert not completions.is_valid({"model": "last", "prompt": "a."})
