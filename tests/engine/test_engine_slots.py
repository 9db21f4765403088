"""The slot engine itself: requests joining and leaving a running engine, a full engine and abort, finished
requests costing nothing, the prefill budget, v1 folders refused, the cache preallocated."""

from __future__ import annotations

import json
import shutil

import pytest

from contract.repository import scan_repository
from engine import (
    Engine,
    InvalidPrompt,
    SamplingParams,
)
from tests.support.engine_fixtures import STREAM_VOCAB, BackendSpy


class _Recording(BackendSpy):
    """The real backend, with the batch size of every call written down."""

    def __init__(self, backend, widths: bool = False):
        super().__init__(backend)
        self.batches, self.widths = [], widths

    def note(self, inputs):
        self.batches.append(inputs[0].shape if self.widths else len(inputs[0]))


def _drive(engine: Engine, schedule: dict[int, list[tuple[str, str, SamplingParams]]], aborts=None) -> dict:
    """Step `engine`, adding schedule[step] before that step (and aborting aborts[step]); id -> (text, end)."""
    aborts = aborts or {}
    texts, ends, step = {}, {}, 0
    while step <= max(schedule) or engine.active():
        for rid, prompt, params in schedule.get(step, []):
            assert engine.add(rid, engine.encode_prompt(prompt), params)
            texts[rid] = ""
        for rid in aborts.get(step, []):
            assert engine.abort(rid)
            ends[rid] = "aborted"
        for d in engine.step():
            texts[d.request_id] += d.text
            if d.finish_reason is not None:
                ends[d.request_id] = d.finish_reason
        step += 1
    return {rid: (texts[rid], ends.get(rid)) for rid in texts}


@pytest.mark.parametrize("name", ["names-gpt", "stream-gpt", "names-wavenet", "stream-mlp"])
def test_requests_joining_and_leaving_mid_run_keep_their_seeded_text(fixtures, name):
    """A seeded sequence gives the same text alone and while others join, finish, slide and are aborted."""
    engine = Engine.load(fixtures[name][0], slots=4)
    mine = SamplingParams(temperature=0.9, top_k=12, seed=42, max_new_tokens=30)
    alone = _drive(engine, {0: [("me", "ab", mine)]})["me"]
    assert engine.active() == 0
    busy = _drive(
        engine,
        {
            0: [("short", "", SamplingParams(seed=1, max_new_tokens=3)), ("gone", "c", SamplingParams(seed=2))],
            2: [("me", "ab", mine)],
            4: [("greedy", "abcdefghijk", SamplingParams(temperature=0, max_new_tokens=25))],
            7: [("late", "abc", SamplingParams(seed=9, max_new_tokens=5)), ("fresh", "", SamplingParams())],
        },
        aborts={5: ["gone"]},
    )
    assert busy["me"] == alone
    assert busy["gone"][1] == "aborted" and busy["short"][1] == "length"
    assert engine.active() == 0 and engine.free() == 4


def test_a_full_engine_says_so_and_abort_frees_the_slot(fixtures):
    engine = Engine.load(fixtures["stream-gpt"][0], slots=2)
    params = SamplingParams(seed=0, max_new_tokens=50)
    assert engine.add("a", [1, 2], params) and engine.add("b", [], params)
    assert not engine.has_capacity() and engine.free() == 0
    assert engine.add("c", [3], params) is False  # no free slot: nothing changes
    assert engine.active() == 2
    with pytest.raises(ValueError, match="already running"):
        engine.add("a", [1], params)
    engine.step()
    assert engine.abort("a") and not engine.abort("a") and not engine.abort("never")
    assert engine.has_capacity() and engine.add("c", [3], params)
    assert {d.request_id for d in engine.step()} <= {"b", "c"}
    with pytest.raises(InvalidPrompt, match="token ids"):
        engine.add("d", [len(STREAM_VOCAB)], params)  # checked before a slot is looked for
    with pytest.raises(InvalidPrompt):
        Engine.load(fixtures["names-gpt"][0], slots=1).add("e", [0], params)  # the boundary mark


@pytest.mark.parametrize("name", ["names-gpt", "names-wavenet"])
def test_finished_requests_stop_costing_work(fixtures, name):
    engine = Engine.load(fixtures[name][0], slots=8)
    engine.runner.backend = recorder = _Recording(engine.runner.backend)
    schedule = {0: [(i, "", SamplingParams(temperature=0, max_new_tokens=2 if i else 30)) for i in range(8)]}
    out = _drive(engine, schedule)
    assert len(out[0][0]) > 0
    assert max(recorder.batches) == 8
    assert recorder.batches[-1] == 1, recorder.batches  # the long one runs on alone


def test_prefills_over_the_budget_wait_oldest_first_and_keep_their_seeded_text(fixtures):
    """A burst of prompts (and rows sliding past block_size) is spread over steps by the prefill budget;
    the rows that wait sample nothing, so a seeded text is the same as alone."""
    engine = Engine.load(fixtures["stream-gpt"][0], slots=6)
    block = engine.manifest.block_size
    params = [SamplingParams(temperature=0.9, seed=i, max_new_tokens=3 * block) for i in range(6)]
    alone = {i: _drive(engine, {0: [(i, "abcdefg", params[i])]})[i] for i in range(6)}
    engine.runner.prefill_tokens = 2 * block
    engine.runner.backend = recorder = _Recording(engine.runner.backend, widths=True)
    for i in range(6):
        assert engine.add(i, engine.encode_prompt("abcdefg"), params[i])
    assert [d.request_id for d in engine.step()] == [0, 1]  # the two oldest fit, the others wait
    assert [d.request_id for d in engine.step()] == [0, 1, 2, 3]
    while engine.active():  # rows slide past block_size at different steps from here on
        engine.step()
    prefills = [(rows, width) for rows, width in recorder.batches if width > 1]
    assert len(prefills) > 6 and all(rows * width <= 2 * block for rows, width in prefills), prefills
    engine.runner.prefill_tokens = 1  # one row always goes, whatever the budget
    busy = _drive(engine, {0: [(i, "abcdefg", params[i]) for i in range(6)]})
    assert busy == alone


def test_v1_folder_is_refused_naming_the_upgrade(fixtures, tmp_path):
    folder = tmp_path / "old-model"
    shutil.copytree(fixtures["names-gpt"][0].folder, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["schema_version"] = 1
    (folder / "manifest.json").write_text(json.dumps(manifest))
    repo = scan_repository(tmp_path)
    assert not repo.models
    assert "python -m training upgrade" in repo.failed["old-model"] and "\n" not in repo.failed["old-model"]


def test_cache_is_preallocated_and_reported(fixtures):
    engine = Engine.load(fixtures["stream-gpt"][0], slots=5)
    m = engine.manifest
    assert engine.cache_bytes_per_slot() == 4 * 2 * m.n_layer * m.n_head * m.head_dim * m.block_size
    assert engine.runner.kv.nbytes == 5 * engine.cache_bytes_per_slot()
    assert Engine.load(fixtures["names-wavenet"][0]).cache_bytes_per_slot() == 0
