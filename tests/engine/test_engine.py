"""The generation engine against the eager PyTorch nets it was exported from.

Fixtures are tiny random checkpoints exported with training.export (the shipped path), with weights
scaled up so that distributions are peaked and greedy choices are far from ties.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from engine import (
    Generator,
    InvalidPrompt,
    SamplingParams,
    derive_seed,
)
from tests.support.engine_fixtures import SPECS, STREAM_VOCAB, texts_of

REPO = Path(__file__).resolve().parents[2]
GREEDY = SamplingParams(temperature=0)


# ---------------------------------------------------------------- eager references (greedy, no cache)


def _context(gen: Generator, prompt: str) -> list[int]:
    ids = gen.encode_prompt(prompt)
    boundary = gen.manifest.boundary_token
    return [boundary, *ids] if boundary is not None else ids


@torch.no_grad()
def gpt_reference(net, gen: Generator, prompt: str, n: int, keep: int | None = None) -> tuple[str, str]:
    """Full-context recompute; when the context would exceed block_size keep its last block_size // 2."""
    block, boundary = net.cfg.block_size, gen.manifest.boundary_token
    keep = keep or block // 2
    hist = _context(gen, prompt) or [gen.engine.pad_token]
    start = max(0, len(hist) - block)
    text = ""
    for _ in range(n):
        logits, _ = net(torch.tensor([hist[start:]]))
        token = int(logits[0, -1].argmax())
        if token == boundary:
            return text, "stop"
        text += gen.manifest.vocab[token]
        hist.append(token)
        if len(hist) - start > block:
            start = len(hist) - keep
    return text, "length"


@torch.no_grad()
def window_reference(net, gen: Generator, prompt: str, n: int) -> tuple[str, str]:
    block, boundary = net.cfg.block_size, gen.manifest.boundary_token
    window = ([gen.engine.pad_token] * block + _context(gen, prompt))[-block:]
    text = ""
    for _ in range(n):
        logits, _ = net(torch.tensor([window]))
        token = int(logits[0].argmax())
        if token == boundary:
            return text, "stop"
        text += gen.manifest.vocab[token]
        window = [*window[1:], token]
    return text, "length"


# ---------------------------------------------------------------- equality with the eager nets


@pytest.mark.parametrize(
    ("name", "prompts"),
    [
        ("names-gpt", ["", "a", "emma", "abcdefghijkl"]),  # the last is longer than block_size (8)
        ("stream-gpt", ["", "A", "to be, or", "the quick brown fox"]),
    ],
)
def test_gpt_greedy_equals_eager_full_recompute(fixtures, gens, name, prompts):
    """40 tokens with block_size 8: several context shifts, mixed prompt lengths in one batch."""
    _, net, _ = fixtures[name]
    gen = gens[name]
    params = [SamplingParams(temperature=0, max_new_tokens=40)] * len(prompts)
    expected = [gpt_reference(net, gen, p, 40) for p in prompts]
    assert texts_of(gen.generate(prompts, params)) == expected
    # Each alone too; and the test can tell: a sliding window (keep block_size - 1) gives other text.
    assert [texts_of(gen.generate([p], params[:1]))[0] for p in prompts] == expected
    assert [gpt_reference(net, gen, p, 40, keep=net.cfg.block_size - 1) for p in prompts] != expected


@pytest.mark.parametrize(
    ("name", "prompts"),
    [("names-wavenet", ["", "a", "emma", "abcdefghijkl"]), ("stream-mlp", ["", "to be", "A"])],
)
def test_window_greedy_equals_eager(fixtures, gens, name, prompts):
    _, net, _ = fixtures[name]
    gen = gens[name]
    params = [SamplingParams(temperature=0, max_new_tokens=30)] * len(prompts)
    assert texts_of(gen.generate(prompts, params)) == [window_reference(net, gen, p, 30) for p in prompts]


def test_onnx_and_torchscript_agree(fixtures, gens):
    entry, _, _ = fixtures["names-gpt"]
    ts = Generator.load(entry, backend="torchscript")
    prompts = ["", "li", "abcdefghij"]
    params = [SamplingParams(temperature=0, max_new_tokens=30)] * 3
    assert texts_of(ts.generate(prompts, params)) == texts_of(gens["names-gpt"].generate(prompts, params))
    seeded = [SamplingParams(seed=7, max_new_tokens=30)] * 3
    assert texts_of(ts.generate(prompts, seeded)) == texts_of(gens["names-gpt"].generate(prompts, seeded))


# ---------------------------------------------------------------- determinism and seeds


@pytest.mark.parametrize("name", list(SPECS))
def test_greedy_is_deterministic_and_stream_matches_generate(gens, name):
    gen = gens[name]
    prompts = ["", "b", "ab"]
    params = [SamplingParams(temperature=0, max_new_tokens=20)] * 3
    first = gen.generate(prompts, params)
    assert gen.generate(prompts, params) == first
    streamed = ["", "", ""]
    finished = [None, None, None]
    counted = [None, None, None]
    for deltas in gen.stream(prompts, params):
        assert deltas, "stream yields only non-empty lists"
        for d in deltas:
            assert finished[d.request_id] is None, "nothing after a sequence's final delta"
            streamed[d.request_id] += d.text
            finished[d.request_id] = d.finish_reason
            counted[d.request_id] = d.completion_tokens
            assert (d.finish_reason is None) == (d.completion_tokens is None)
    assert [(t, f) for t, f in zip(streamed, finished, strict=True)] == texts_of(first)
    assert counted == [c.completion_tokens for c in first]


@pytest.mark.parametrize("name", ["names-gpt", "stream-gpt", "names-wavenet"])
def test_seeded_sequence_is_independent_of_its_batch(gens, name):
    gen = gens[name]
    mine = SamplingParams(temperature=0.9, top_k=12, top_p=0.95, seed=42, max_new_tokens=30)
    alone = gen.generate(["ab"], [mine])[0]
    others = ["", "abcdefghijk", "c", "abcdef"]
    batch_params = [
        SamplingParams(seed=1, max_new_tokens=3),  # finishes early: dropped from the batch arrays
        SamplingParams(temperature=0, max_new_tokens=25),
        SamplingParams(temperature=1.3, max_new_tokens=40),  # fresh entropy
        SamplingParams(seed=42, top_p=0.5, max_new_tokens=12),
    ]
    for where in range(len(others) + 1):
        prompts = [*others[:where], "ab", *others[where:]]
        params = [*batch_params[:where], mine, *batch_params[where:]]
        assert gen.generate(prompts, params)[where] == alone
    assert gen.generate(["ab"], [mine])[0] == alone


def test_seeded_sampling_is_not_greedy_and_seeds_differ(gens):
    gen = gens["stream-gpt"]
    greedy = gen.generate(["a"], [SamplingParams(temperature=0, max_new_tokens=40)])[0].text
    texts = {gen.generate(["a"], [SamplingParams(seed=s, max_new_tokens=40)])[0].text for s in range(4)}
    assert len(texts) > 1 and texts != {greedy}


def test_derive_seed():
    assert derive_seed(None, 3) is None
    assert derive_seed(5, 0) == 5
    derived = [derive_seed(5, i) for i in range(1, 6)]
    assert derived == [derive_seed(5, i) for i in range(1, 6)]
    assert len(set(derived)) == 5 and 5 not in derived
    assert derive_seed(6, 1) != derive_seed(5, 1)
    assert derive_seed(-3, 1) is not None


def test_top_k_1_and_tiny_top_p_equal_greedy(gens):
    for name in ("stream-gpt", "names-wavenet"):
        gen = gens[name]
        prompts = ["", "ab"]
        greedy = gen.generate(prompts, [SamplingParams(temperature=0, max_new_tokens=25)] * 2)
        top_k = gen.generate(prompts, [SamplingParams(temperature=1.5, top_k=1, seed=3, max_new_tokens=25)] * 2)
        top_p = gen.generate(prompts, [SamplingParams(temperature=1.0, top_p=1e-6, seed=3, max_new_tokens=25)] * 2)
        assert top_k == greedy
        assert top_p == greedy


# ---------------------------------------------------------------- finishing


@pytest.mark.parametrize("name", ["names-gpt", "names-wavenet"])
def test_lines_models_stop_at_the_boundary(gens, name):
    gen = gens[name]
    n = 24
    params = [SamplingParams(seed=derive_seed(11, i), max_new_tokens=20) for i in range(n)]
    done = gen.generate([""] * n, params)
    stopped = [c for c in done if c.finish_reason == "stop"]
    assert stopped, "some sampled names end at the boundary"
    for c in done:
        assert "." not in c.text
        if c.finish_reason == "stop":
            assert c.completion_tokens == len(c.text) + 1  # the boundary was sampled, not shown
        else:
            assert c.completion_tokens == len(c.text) == 20
    assert gen.engine.default_max_new_tokens() == 64


def test_max_new_tokens_gives_length(gens):
    gen = gens["stream-gpt"]
    (c,) = gen.generate(["to be"], [SamplingParams(seed=0, max_new_tokens=5)])
    assert (len(c.text), c.finish_reason, c.prompt_tokens, c.completion_tokens) == (5, "length", 5, 5)
    assert gen.engine.default_max_new_tokens() == 256
    (c,) = gen.generate(["to be"], [SamplingParams(temperature=0)])
    assert (len(c.text), c.finish_reason) == (256, "length")
    with pytest.raises(ValueError, match="cap"):
        gen.generate(["a"], [SamplingParams(max_new_tokens=gen.engine.max_new_tokens_cap + 1)])
    with pytest.raises(ValueError):
        SamplingParams(max_new_tokens=-1)


def _stream_text(gen: Generator, prompt: str, params: SamplingParams) -> tuple[list[str], str | None]:
    pieces, reason = [], None
    for deltas in gen.stream([prompt], [params]):
        for d in deltas:
            pieces.append(d.text)
            reason = d.finish_reason
    return pieces, reason


def test_stop_strings(gens):
    gen = gens["stream-gpt"]
    base = {"seed": 3, "max_new_tokens": 60}  # seeded: the same tokens up to the stop, less repetitive
    full = gen.generate(["a"], [SamplingParams(**base)])[0].text
    # A 3-character stop string whose first occurrence starts at i > 0.
    i = next(i for i in range(5, 50) if full.find(full[i : i + 3]) == i and "\n" not in full[i : i + 3])
    stop = full[i : i + 3]
    params = SamplingParams(**base, stop=("never-there", stop))
    (c,) = gen.generate(["a"], [params])
    assert (c.text, c.finish_reason) == (full[:i], "stop")
    assert c.completion_tokens == i + 3
    pieces, reason = _stream_text(gen, "a", params)
    # Deltas only ever append: if they join to the final text, no part of the stop string was shown.
    assert ("".join(pieces), reason) == (full[:i], "stop")
    # A stop string that starts matching but never completes: held back, then released in full.
    near = full[i : i + 2] + "#"  # '#' is not in the vocabulary: it can never complete
    params = SamplingParams(**base, stop=(near,))
    pieces, reason = _stream_text(gen, "a", params)
    assert ("".join(pieces), reason) == (full, "length")
    shown = np.cumsum([len(p) for p in pieces]).tolist()
    assert i + 1 not in shown and i + 2 not in shown  # full[i:i+2] was held while it could still match
    assert gen.generate(["a"], [params])[0].text == full


def test_stop_string_in_a_lines_model_and_empty_stops_are_ignored(gens):
    gen = gens["names-wavenet"]
    full = gen.generate(["b"], [GREEDY])[0]
    if len(full.text) >= 2:
        (c,) = gen.generate(["b"], [SamplingParams(temperature=0, stop=(full.text[1],))])
        assert (c.text, c.finish_reason) == (full.text[: full.text.index(full.text[1])], "stop")
    assert gen.generate(["b"], [SamplingParams(temperature=0, stop=("",))])[0] == full


# ---------------------------------------------------------------- prompts


def test_invalid_prompt_names_the_characters(gens):
    gen = gens["names-gpt"]
    with pytest.raises(InvalidPrompt) as info:
        gen.encode_prompt("Zoe!Z")
    assert info.value.chars == ("Z", "!")
    assert "names-gpt's vocabulary: 'Z', '!'" in info.value.message
    assert "\n" not in str(info.value)
    with pytest.raises(InvalidPrompt) as info:
        gen.encode_prompt("ann.a")
    assert info.value.chars == (".",) and "boundary" in info.value.message
    with pytest.raises(InvalidPrompt):
        gen.stream(["ok", "n\no"], [GREEDY, GREEDY])  # raised at the call, before any generation
    assert gen.encode_prompt("emma") == [5, 13, 13, 1]
    assert gens["stream-gpt"].encode_prompt("a.") == [STREAM_VOCAB.index("a"), STREAM_VOCAB.index(".")]


# ---------------------------------------------------------------- repository


# ---------------------------------------------------------------- backends and the torch-free path


# ---------------------------------------------------------------- the slot engine itself
