"""The engine step's own work: prefill calls run beside the decode call on the other thread, and the rows
that ask for logprobs or penalties get them whoever else comes and goes (the engine counts them)."""

from __future__ import annotations

import threading

from engine import Engine, SamplingParams
from engine.spans import Spans
from tests.support.engine_fixtures import BackendSpy


class _Meeting(BackendSpy):
    """The real backend; while `barrier` is set, every call waits there for another call to arrive, so a
    step whose calls run one after another breaks it (BrokenBarrierError) instead of passing."""

    def __init__(self, backend):
        super().__init__(backend)
        self.barrier, self.kinds = None, []

    def note(self, inputs):
        if self.barrier is not None:  # a prefill starts from an empty cache, a decode reads one
            self.kinds.append("prefill" if 0 in inputs[2].shape else "decode")
            self.barrier.wait()


def _texts(engine: Engine, schedule: dict[int, list[tuple[int, str, SamplingParams]]]) -> dict[int, tuple]:
    """Step `engine`, adding schedule[step] before that step; id -> (text, logprobs of the text)."""
    out: dict[int, tuple[str, list]] = {}
    step = 0
    while step <= max(schedule) or engine.active():
        for rid, prompt, params in schedule.get(step, []):
            assert engine.add(rid, engine.encode_prompt(prompt), params)
            out[rid] = ("", [])
        for d in engine.step():
            text, lps = out[d.request_id]
            out[d.request_id] = (text + d.text, lps + list(d.logprobs or ()))
        step += 1
    return out


def test_a_steps_prefill_runs_beside_its_decode_on_the_other_thread(fixtures):
    entry = fixtures["stream-gpt"][0]
    params = SamplingParams(temperature=0.8, seed=5, max_new_tokens=6)
    schedule = {0: [(0, "ab", params)], 2: [(1, "hello", params)]}
    alone = _texts(Engine.load(entry, slots=2, threads=1), schedule)
    engine = Engine.load(entry, slots=2, threads=2)
    engine.runner.backend = meeting = _Meeting(engine.runner.backend)
    assert engine.add(0, engine.encode_prompt("ab"), params)
    engine.step()  # row 0 prefilled: it has a cache
    assert engine.add(1, engine.encode_prompt("hello"), params)
    meeting.barrier = threading.Barrier(2, timeout=10)
    engine.step()  # row 0 decodes while row 1 is prefilled: both calls must be running at once
    assert sorted(meeting.kinds) == ["decode", "prefill"]
    meeting.barrier = None
    for rid in (0, 1):
        engine.abort(rid)
    assert _texts(engine, schedule) == alone


def test_spans_share_the_calls_and_keep_their_order():
    spans = Spans(2)
    met = threading.Barrier(2, timeout=10)
    names = spans.each([lambda: (met.wait(), threading.current_thread().name)[1] for _ in range(2)])
    assert len(set(names)) == 2  # each waited for the other: they ran on two threads at once
    assert spans.each([lambda i=i: i * i for i in range(7)]) == [i * i for i in range(7)]


def test_logprobs_and_penalties_reach_rows_joining_after_others_left(fixtures):
    entry = fixtures["stream-gpt"][0]
    asks = SamplingParams(temperature=0.9, seed=3, max_new_tokens=6, logprobs=2, presence_penalty=1.5)
    schedule = {
        0: [
            (0, "ab", SamplingParams(temperature=0, max_new_tokens=2, logprobs=1, frequency_penalty=0.5)),
            (1, "ba", SamplingParams(temperature=0, max_new_tokens=12)),
        ],
        4: [(2, "hello", asks)],  # row 0 has left, row 1 is still running: the counts went 2 -> 0 -> 1
        5: [(3, "abc", SamplingParams(temperature=0, max_new_tokens=3))],
    }
    engine = Engine.load(entry, slots=3)
    got = _texts(engine, schedule)
    alone = _texts(Engine.load(entry, slots=3), {0: [(2, "hello", asks)]})
    assert got[2] == alone[2]
    assert len(got[2][1]) == len(got[2][0]) and all(len(lp.top) == 2 for lp in got[2][1])
    assert got[1][1] == [] and got[3][1] == []  # and the rows that asked for none get none
    plain = _texts(
        Engine.load(entry, slots=3), {0: [(2, "hello", SamplingParams(temperature=0.9, seed=3, max_new_tokens=6))]}
    )
    assert plain[2][0] != got[2][0]  # the presence penalty changed the text (so it was applied)
