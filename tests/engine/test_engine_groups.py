"""Prefill by calls of similar lengths (engine/runners.py): less padding, same logits and texts."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from contract.repository import scan_repository
from engine import Engine, SamplingParams
from engine.prefill import PAD_SLACK, PREFILL_SCRATCH_BYTES, prefill_calls
from tests.support.engine_fixtures import BackendSpy

REPO = Path(__file__).resolve().parents[2]
TEXT = (
    "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\n"
    "First Citizen:\nYou are all resolved rather to die than to famish?\n"
)


class _Recording(BackendSpy):
    """The backend, recording each call's (rows, new tokens) and thread."""

    def __init__(self, backend):
        super().__init__(backend)
        self.calls, self.threads = [], set()

    def note(self, inputs):
        self.calls.append(inputs[0].shape)
        self.threads.add(threading.current_thread().name)


def _prompts(n: int) -> list[str]:
    """Prompts of spread lengths (1-67 characters) from spread offsets, as served traffic brings."""
    return [TEXT[(i * 13) % 60 :][: 1 + (i * 37) % 67] for i in range(n)]


def _drive(engine: Engine, prompts: list[str], params: list[SamplingParams]) -> list[str]:
    texts = [""] * len(prompts)
    for i, (p, sp) in enumerate(zip(prompts, params, strict=True)):
        assert engine.add(i, engine.encode_prompt(p), sp)
    while engine.active():
        for d in engine.step():
            texts[d.request_id] += d.text
    return texts


@pytest.fixture(scope="module")
def shakespeare():
    repo = scan_repository(REPO / "models")
    if "shakespeare-gpt" not in repo.models:
        pytest.skip("models/shakespeare-gpt is not in this checkout")
    return repo.models["shakespeare-gpt"]


def test_prefill_calls_bound_padding_and_scratch():
    lengths = np.array([5, 64, 3, 60, 1, 33, 30, 2, 67, 31])
    calls = prefill_calls(lengths, n_embd=128)
    assert sorted(np.concatenate(calls).tolist()) == list(range(len(lengths)))  # every row once
    for call in calls:
        widths = lengths[call]
        padding, tokens = len(call) * widths.max() - widths.sum(), widths.sum()
        assert padding <= tokens // 4 + PAD_SLACK, (call, widths)
    assert len(calls) < len(lengths)  # rows of similar lengths share a call
    assert [c.tolist() for c in prefill_calls(np.array([7, 7, 7]), 32)] == [[0, 1, 2]]
    # the attention scratch (rows x width^2 x n_embd floats) caps a call's rows
    wide = prefill_calls(np.full(12, 128), n_embd=128)
    assert all(len(c) * 128 * 128 * 128 * 4 <= PREFILL_SCRATCH_BYTES for c in wide) and len(wide) > 1


def test_grouped_prefill_gives_each_row_its_text_alone(shakespeare):
    """Prompts of spread lengths prefilled in calls of similar lengths (several per step) give every row
    the text it gets alone, greedy and seeded; no call is padded beyond the rule."""
    engine = Engine.load(shakespeare, slots=24)
    prompts = _prompts(24)
    params = [SamplingParams(temperature=0, max_new_tokens=12) if i % 2 else
              SamplingParams(temperature=0.8, seed=i, max_new_tokens=12) for i in range(24)]  # fmt: skip
    alone = [_drive(engine, [p], [sp])[0] for p, sp in zip(prompts, params, strict=True)]
    engine.runner.backend = recorder = _Recording(engine.runner.backend)
    together = _drive(engine, prompts, params)
    assert together == alone
    prefills = [shape for shape in recorder.calls if shape[1] > 1]
    assert len(prefills) > 2 and max(rows for rows, _ in prefills) > 1  # rows share calls, in several calls


def test_a_step_prefills_within_the_budget_padding_included(shakespeare):
    engine = Engine.load(shakespeare, slots=32)
    engine.runner.backend = recorder = _Recording(engine.runner.backend)
    params = SamplingParams(temperature=0, max_new_tokens=4)
    for i, p in enumerate(_prompts(32)):
        assert engine.add(i, engine.encode_prompt(p), params)
    steps = []
    while engine.active():
        recorder.calls.clear()
        engine.step()
        steps.append([rows * width for rows, width in recorder.calls if width > 1])
    budget = engine.runner.prefill_tokens
    assert sum(len(s) > 0 for s in steps) > 2  # the burst is spread over steps
    assert all(sum(s) <= budget for s in steps if len(s) > 1), steps
    assert sum(map(sum, steps)) < 1.25 * sum(len(p) for p in _prompts(32)) + PAD_SLACK * sum(map(len, steps))


def test_prefill_calls_run_on_every_thread_and_change_nothing(shakespeare):
    prompts = _prompts(16)
    params = [SamplingParams(temperature=0.7, seed=i, max_new_tokens=8) for i in range(16)]
    one = _drive(Engine.load(shakespeare, slots=16, threads=1), prompts, params)
    engine = Engine.load(shakespeare, slots=16, threads=2)
    engine.runner.backend = recorder = _Recording(engine.runner.backend)
    assert _drive(engine, prompts, params) == one
    assert len(recorder.threads) == 2, recorder.threads


def test_grouped_prefill_of_a_tiny_model_matches_each_row_alone(fixtures):
    """The tiny stream GPT (block_size 8): prompts of 1-8 characters, some sliding past the block."""
    entry = fixtures["stream-gpt"][0]
    engine = Engine.load(entry, slots=8)
    prompts = ["a", "abcdefgh", "ab", "abcdefg", "abc", "abcd", "b", "hello wo"]
    params = [SamplingParams(temperature=0, max_new_tokens=20)] * 8
    alone = [_drive(engine, [p], [params[0]])[0] for p in prompts]
    assert _drive(engine, prompts, params) == alone
