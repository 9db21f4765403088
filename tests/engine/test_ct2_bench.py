"""The served-shape benchmark's pieces (benchmarks.served_shape, benchmarks.ct2): its prompts keep the shape it
claims, and CTranslate2 converted from the shipped shakespeare-gpt greedily writes charlm's text, character
for character, in both shapes. Nothing is timed here (timings are `python -m benchmarks --only served`)."""

from pathlib import Path

import pytest

from benchmarks.ct2 import first_difference
from benchmarks.served_shape import served_prompts

REPO = Path(__file__).resolve().parents[2]
TEXT = "".join(chr(ord("a") + i % 26) for i in range(10_000))


def test_served_prompts_spread_lengths_and_offsets():
    prompts = served_prompts(TEXT, 128, 67)
    lengths = [len(p) for p in prompts]
    assert min(lengths) == 1 and max(lengths) == 67
    assert sorted(lengths[:67]) == list(range(1, 68))  # every length once over 67 consecutive rows
    assert len(prompts) == 128
    assert [len(p) for p in served_prompts(TEXT, 1, 67)] == [34]
    digits = "".join(f"{i:05d}" for i in range(5_000))  # every 5-character window at a multiple of 5 is unique
    positions = [digits.find(p) if len(p) >= 5 else None for p in served_prompts(digits, 32, 67)]
    found = [x for x in positions if x is not None]
    assert found == sorted(found) and found[-1] - found[0] > 20_000  # evenly spread over the 25,000 characters


def test_first_difference():
    assert first_difference("abc", "abc") is None
    assert first_difference("abc", "abd") == 2
    assert first_difference("ab", "abc") == 2


@pytest.fixture(scope="module")
def converted():
    pytest.importorskip("ctranslate2", reason="ctranslate2 is a bench extra")
    pytest.importorskip("transformers", reason="transformers is a bench extra")
    from benchmarks.ct2 import Ct2Model, convert_all
    from benchmarks.weights import load_eager, to_hf
    from contract.repository import scan_repository
    from engine import Generator

    entry = scan_repository(REPO / "models").models["shakespeare-gpt"]
    tmp, paths = convert_all(to_hf(load_eager(entry.folder)))
    with tmp:
        models = {p: Ct2Model.load(path, p, threads=1) for p, path in paths.items()}
        yield entry, Generator.load(entry, backend="onnx", threads=1, slots=16), models


def test_ct2_float32_greedy_equals_charlm_in_both_shapes(converted):
    from benchmarks.served_shape import greedy_parity, shakespeare_text

    entry, gen, models = converted
    vocab = list(entry.manifest.vocab)
    text = "".join(ch for ch in shakespeare_text() if ch in set(vocab))
    # a 1-character row among longer ones, and a batch whose shortest prompt is longer: CT2 treats them apart
    for prompts in (["\n", *served_prompts(text, 6, 67)], served_prompts(text, 6, 67)):
        parity = greedy_parity(gen, models, prompts, 60, vocab)
        assert parity["float32"] == {
            "rows": len(prompts),
            "equal": len(prompts),
            "first_difference": [],
            "first_difference_median": None,
        }
        assert parity["int8"]["rows"] == len(prompts)
        assert parity["int8"]["equal"] + len(parity["int8"]["first_difference"]) == len(prompts)


def test_ct2_sampling_gives_exactly_the_new_tokens_asked_per_row(converted):
    _, _, models = converted
    ragged = [[0], [5, 6, 7, 8, 9, 10], [1] * 67]
    for model in models.values():
        for prompts in (ragged, ragged[1:], [[0]] * 3):
            rows = model.generate(prompts, 60, temperature=1.0, seed=1)
            assert [len(r) for r in rows] == [60] * len(prompts)
            assert all(0 <= i < 65 for r in rows for i in r)
