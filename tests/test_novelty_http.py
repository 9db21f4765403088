"""The `novel` mark on generated `lines` samples, through a real server on the shipped models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from service.engine.novelty import DataHashes

MODELS = Path(__file__).resolve().parents[1] / "models"


@pytest.fixture(scope="module")
def names_data() -> DataHashes:
    return DataHashes.load(MODELS / "names-gpt")


def test_names_choices_say_whether_they_are_in_the_training_data(client, names_data):
    body = {"model": "names-gpt", "prompt": "", "n": 24, "seed": 5}
    for route, key in (("/v1/generate", "max_new_tokens"), ("/v1/completions", "max_tokens")):
        out = client.post(route, json={**body, key: 30}).json()
        marked = [c for c in out["choices"] if "novel" in c]
        assert marked, out
        for c in out["choices"]:
            if c["finish_reason"] == "stop":  # a whole name: marked, and the mark is the data's answer
                assert c["novel"] == names_data.is_novel(c["text"])
            else:
                assert "novel" not in c  # cut at max tokens: not a whole sample
        assert {c["novel"] for c in marked} == {True, False}, "24 samples: some copies, some new"


def test_stream_marks_on_the_final_event_and_stream_models_carry_none(client, names_data):
    body = {"model": "names-gpt", "prompt": "ma", "n": 4, "seed": 1, "stream": True}
    with client.stream("POST", "/v1/generate", json=body) as r:
        events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
    texts = [""] * 4  # the first event of each choice carries its prompt
    for e in events[:-1]:
        for c in e["choices"]:
            texts[c["index"]] += c["text"]
    final = {c["index"]: c for c in events[-1]["choices"]}
    for i, c in final.items():
        if c["finish_reason"] == "stop":
            assert c["novel"] == names_data.is_novel(texts[i])
    out = client.post("/v1/generate", json={"model": "shakespeare-gpt", "prompt": "A", "max_new_tokens": 5}).json()
    assert all("novel" not in c for c in out["choices"])
