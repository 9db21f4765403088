"""Log-probabilities, prompt scoring and logits adjustments of the slot engine, against the eager nets."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine import Engine, SamplingParams
from engine.logprobs import log_softmax

GREEDY = SamplingParams(temperature=0, max_new_tokens=12)


def _run(engine: Engine, prompt: str, params: SamplingParams) -> list:
    assert engine.add("r", engine.encode_prompt(prompt), params)
    deltas = []
    while engine.active():
        deltas += engine.step()
    return deltas


@torch.no_grad()
def _eager_logprobs(net, arch: str, context: list[int], pad: int) -> np.ndarray:
    """log-softmax of the eager net's next-token logits after each prefix of `context` (row i: after i+1)."""
    if arch == "gpt":
        return log_softmax(net(torch.tensor([context]))[0][0].numpy())
    block = net.cfg.block_size
    padded = [pad] * block + context
    windows = torch.tensor([padded[i + 1 : i + 1 + block] for i in range(len(context))])
    return log_softmax(net(windows)[0].numpy())


@pytest.mark.parametrize("name", ["names-gpt", "stream-gpt", "names-wavenet"])
def test_token_logprobs_are_the_models_own(fixtures, name):
    entry, net, _ = fixtures[name]
    engine = Engine.load(entry, slots=2)
    prompt = "ab"
    deltas = _run(engine, prompt, SamplingParams(temperature=0, max_new_tokens=5, logprobs=3))  # within block_size
    lps = [lp for d in deltas for lp in d.logprobs]
    text = "".join(d.text for d in deltas)
    assert len(lps) == len(text) and all(len(lp.top) == 3 for lp in lps)
    assert all(lp.top[0][0] == lp.token and lp.top[0][1] == pytest.approx(lp.logprob) for lp in lps)  # greedy
    ids = engine.encode_prompt(prompt)
    boundary = entry.manifest.boundary_token
    context = [boundary, *ids] if boundary is not None else ids
    tokens = [lp.token for lp in lps]
    want = _eager_logprobs(net, entry.manifest.arch, context + tokens[:-1], engine.pad_token)
    for i, lp in enumerate(lps):
        assert lp.logprob == pytest.approx(want[len(context) - 1 + i, lp.token], abs=1e-4)
    # Sampling settings do not change a score: the same tokens forced greedily at another temperature.
    hot = _run(engine, prompt, SamplingParams(temperature=1e-9, top_k=1, max_new_tokens=5, logprobs=0))
    assert [lp.logprob for d in hot for lp in d.logprobs] == pytest.approx([lp.logprob for lp in lps], abs=1e-6)


@pytest.mark.parametrize("name", ["names-gpt", "stream-gpt", "names-wavenet", "stream-mlp"])
def test_prompt_scoring_without_generating(fixtures, name):
    entry, net, _ = fixtures[name]
    engine = Engine.load(entry, slots=2)
    prompt = "abcab"
    (delta,) = _run(engine, prompt, SamplingParams(max_new_tokens=0, prompt_logprobs=True, logprobs=1))
    assert (delta.text, delta.finish_reason, delta.completion_tokens) == ("", "length", 0)
    scores = delta.prompt_logprobs
    assert len(scores) == len(prompt)
    ids = engine.encode_prompt(prompt)
    boundary = entry.manifest.boundary_token
    context = [boundary, *ids] if boundary is not None else ids
    want = _eager_logprobs(net, entry.manifest.arch, context, engine.pad_token)
    offset = len(context) - len(ids)
    for j, lp in enumerate(scores):
        if offset + j == 0:
            assert lp is None  # a stream model's first character has no context
        else:
            assert lp.token == ids[j] and len(lp.top) == 1
            assert lp.logprob == pytest.approx(want[offset + j - 1, ids[j]], abs=1e-4)


def test_a_prompt_longer_than_the_context_is_scored_by_blocks(fixtures):
    """Past block_size, the prompt is scored as the evaluation scores stream data: disjoint blocks."""
    entry, net, _ = fixtures["stream-gpt"]
    engine = Engine.load(entry, slots=1)
    prompt = "abcdefghijklmnopqrs"  # block_size 8: three blocks
    (delta,) = _run(engine, prompt, SamplingParams(max_new_tokens=0, prompt_logprobs=True))
    scores = delta.prompt_logprobs
    assert scores[0] is None and all(lp is not None for lp in scores[1:])
    ids = engine.encode_prompt(prompt)
    for k in range(0, len(ids), 8):
        want = _eager_logprobs(net, "gpt", ids[k : k + 8], engine.pad_token)
        for j in range(k + 1, min(k + 9, len(ids))):
            assert scores[j].logprob == pytest.approx(want[j - k - 1, ids[j]], abs=1e-4)


def test_logit_bias_min_tokens_and_ignore_eos(fixtures):
    entry = fixtures["names-gpt"][0]
    engine = Engine.load(entry, slots=4)
    z = entry.manifest.vocab.index("z")
    forced = "".join(d.text for d in _run(engine, "a", SamplingParams(logit_bias={z: 100.0}, max_new_tokens=5)))
    assert forced == "zzzzz"
    for seed in range(6):
        long = "".join(d.text for d in _run(engine, "", SamplingParams(seed=seed, min_tokens=10, max_new_tokens=40)))
        assert len(long) >= 10
    on = "".join(d.text for d in _run(engine, "", SamplingParams(seed=1, ignore_eos=True, max_new_tokens=60)))
    assert len(on) == 60 and "." in on  # names one after another, separated by the boundary mark
    with pytest.raises(ValueError, match="logit_bias"):
        engine.add("x", [1], SamplingParams(logit_bias={99: 1.0}))
    with pytest.raises(ValueError, match="logprobs"):
        engine.add("x", [1], SamplingParams(logprobs=1000))
    assert engine.active() == 0


def test_penalties_discourage_repeats(fixtures):
    engine = Engine.load(fixtures["stream-gpt"][0], slots=2)

    def distinct(**kw) -> int:
        text = "".join(d.text for d in _run(engine, "aaa", SamplingParams(temperature=0, max_new_tokens=40, **kw)))
        return len(set(text))

    plain = distinct()
    assert distinct(frequency_penalty=2.0) > plain
    assert distinct(presence_penalty=2.0) > plain
    assert distinct(repetition_penalty=2.0) >= plain


def test_sampling_params_ranges():
    for bad in (
        {"presence_penalty": 2.5},
        {"frequency_penalty": -3},
        {"repetition_penalty": 0},
        {"logit_bias": {1: 101}},
        {"logprobs": -1},
        {"min_tokens": -1},
        {"max_new_tokens": -1},
    ):
        with pytest.raises(ValueError):
            SamplingParams(**bad)
    assert SamplingParams(logit_bias={"3": 1}).logit_bias == ((3, 1.0),)
