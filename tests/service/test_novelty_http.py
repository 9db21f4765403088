"""The `novel` mark on generated `lines` samples, through a real server on the shipped models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.novelty import DataHashes

MODELS = Path(__file__).resolve().parents[2] / "models"


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


def test_novel_only_resamples_copies_reproducibly(client, names_data):
    body = {"model": "names-gpt", "n": 30, "seed": 12, "temperature": 1.0}
    plain = client.post("/v1/generate", json=body).json()
    marks = [c["novel"] for c in plain["choices"] if c["finish_reason"] == "stop"]
    # what MAX_ATTEMPTS rests on: most samples are new (about 58%), so 16 copies in a row are very unlikely
    assert 0.3 < sum(marks) / len(marks) < 1, marks
    fresh = client.post("/v1/generate", json={**body, "novel_only": True}).json()
    for c in fresh["choices"]:
        assert c["finish_reason"] == "stop" and c["novel"] is True and names_data.is_novel(c["text"]), c
    kept = sum(len(c["text"]) + 1 for c in fresh["choices"])  # each kept sample + its end marker
    assert fresh["usage"]["completion_tokens"] > kept, "the discarded attempts are paid for"
    again = client.post("/v1/completions", json={**body, "novel_only": True, "echo": True}).json()
    assert [c["text"] for c in again["choices"]] == [c["text"] for c in fresh["choices"]]
    r = client.post("/v1/generate", json={"model": "shakespeare-gpt", "novel_only": True})
    assert r.status_code == 400 and r.json()["error"]["param"] == "novel_only", r.text


def test_novel_only_stream_sends_only_new_whole_samples(client, names_data):
    body = {"model": "names-gpt", "prompt": "ma", "n": 12, "seed": 3, "novel_only": True, "stream": True}
    with client.stream("POST", "/v1/completions", json=body) as r:
        events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
    texts: dict[int, list[str]] = {}
    for e in events[:-1]:
        for c in e["choices"]:
            texts.setdefault(c["index"], []).append(c["text"])
    assert sorted(texts) == list(range(12)) and all(len(t) == 1 for t in texts.values()), "one piece per choice"
    for c in events[-1]["choices"]:
        assert c["finish_reason"] == "stop" and c["novel"] is True
        assert names_data.is_novel("ma" + texts[c["index"]][0])
