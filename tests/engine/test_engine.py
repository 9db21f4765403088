"""The generation engine against the eager PyTorch nets it was exported from.

Fixtures are tiny random checkpoints exported with training.export (the shipped path), with weights
scaled up so that distributions are peaked and greedy choices are far from ties.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from contract.repository import scan_repository
from engine import (
    BackendUnavailable,
    Engine,
    Generator,
    InvalidPrompt,
    SamplingParams,
    derive_seed,
)
from tests.support.engine_fixtures import SPECS, STREAM_VOCAB

REPO = Path(__file__).resolve().parents[2]
GREEDY = SamplingParams(temperature=0)


@pytest.fixture(scope="session")
def gens(fixtures) -> dict[str, Generator]:
    """Three slots: the tests' batches of 4-6 sequences join and leave a running engine as slots free."""
    return {name: Generator.load(entry, slots=3) for name, (entry, _, _) in fixtures.items()}


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


def _texts(completions) -> list[tuple[str, str]]:
    return [(c.text, c.finish_reason) for c in completions]


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
    assert _texts(gen.generate(prompts, params)) == expected
    # Each alone too; and the test can tell: a sliding window (keep block_size - 1) gives other text.
    assert [_texts(gen.generate([p], params[:1]))[0] for p in prompts] == expected
    assert [gpt_reference(net, gen, p, 40, keep=net.cfg.block_size - 1) for p in prompts] != expected


@pytest.mark.parametrize(
    ("name", "prompts"),
    [("names-wavenet", ["", "a", "emma", "abcdefghijkl"]), ("stream-mlp", ["", "to be", "A"])],
)
def test_window_greedy_equals_eager(fixtures, gens, name, prompts):
    _, net, _ = fixtures[name]
    gen = gens[name]
    params = [SamplingParams(temperature=0, max_new_tokens=30)] * len(prompts)
    assert _texts(gen.generate(prompts, params)) == [window_reference(net, gen, p, 30) for p in prompts]


def test_onnx_and_torchscript_agree(fixtures, gens):
    entry, _, _ = fixtures["names-gpt"]
    ts = Generator.load(entry, backend="torchscript")
    prompts = ["", "li", "abcdefghij"]
    params = [SamplingParams(temperature=0, max_new_tokens=30)] * 3
    assert _texts(ts.generate(prompts, params)) == _texts(gens["names-gpt"].generate(prompts, params))
    seeded = [SamplingParams(seed=7, max_new_tokens=30)] * 3
    assert _texts(ts.generate(prompts, seeded)) == _texts(gens["names-gpt"].generate(prompts, seeded))


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
    assert [(t, f) for t, f in zip(streamed, finished, strict=True)] == _texts(first)
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


def test_scan_repository_leaves_out_bad_folders(fixtures, tmp_path, caplog):
    src = fixtures["names-wavenet"][0].folder
    for name in ("good", "bad-sha", "broken-manifest"):
        shutil.copytree(src, tmp_path / name)
    for name in ("good", "bad-sha"):  # distinct manifest names
        manifest = json.loads((tmp_path / name / "manifest.json").read_text())
        manifest["name"] = name
        (tmp_path / name / "manifest.json").write_text(json.dumps(manifest))
    onnx = tmp_path / "bad-sha" / "model.onnx"
    data = bytearray(onnx.read_bytes())
    data[-1] ^= 0xFF  # same size, different bytes
    onnx.write_bytes(bytes(data))
    (tmp_path / "broken-manifest" / "manifest.json").write_text('{"schema_version": 1, "name": ')
    (tmp_path / "empty").mkdir()
    (tmp_path / "README.txt").write_text("not a folder")
    repo = scan_repository(tmp_path)
    assert sorted(repo.models) == ["good"]
    assert repo.models["good"].folder == tmp_path / "good"
    assert sorted(repo.failed) == ["bad-sha", "broken-manifest", "empty"]
    assert "sha256" in repo.failed["bad-sha"]
    assert "manifest" in repo.failed["broken-manifest"]
    assert "no manifest.json" in repo.failed["empty"]
    assert all("\n" not in reason for reason in repo.failed.values())
    assert "bad-sha" in caplog.text
    with pytest.raises(FileNotFoundError):
        scan_repository(tmp_path / "missing")


# ---------------------------------------------------------------- backends and the torch-free path


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], cwd=REPO, capture_output=True, text=True, timeout=60
    )


def test_onnx_path_never_imports_torch(fixtures, gens):
    folder = fixtures["names-gpt"][0].folder
    proc = _python(f"""
        import sys
        from pathlib import Path
        from contract.repository import scan_repository
        from engine import Generator, SamplingParams
        entry = scan_repository(Path({str(folder.parent)!r})).models["names-gpt"]
        gen = Generator.load(entry)
        out = gen.generate(["", "emma"], [SamplingParams(temperature=0, max_new_tokens=30)] * 2)
        out += gen.generate(["li"], [SamplingParams(seed=5, top_k=5, top_p=0.9, stop=("zz",))])
        assert "torch" not in sys.modules, sorted(m for m in sys.modules if "torch" in m)
        print(repr([c.text for c in out]))
    """)
    assert proc.returncode == 0, proc.stderr
    here = gens["names-gpt"].generate(["", "emma"], [SamplingParams(temperature=0, max_new_tokens=30)] * 2)
    here += gens["names-gpt"].generate(["li"], [SamplingParams(seed=5, top_k=5, top_p=0.9, stop=("zz",))])
    assert proc.stdout.strip() == repr([c.text for c in here])


def test_torchscript_without_torch_is_backend_unavailable(fixtures):
    folder = fixtures["names-gpt"][0].folder
    proc = _python(f"""
        import sys
        sys.modules["torch"] = None  # as if torch were not installed
        from pathlib import Path
        from contract.repository import scan_repository
        from engine import BackendUnavailable, Generator
        entry = scan_repository(Path({str(folder.parent)!r})).models["names-gpt"]
        try:
            Generator.load(entry, backend="torchscript")
        except BackendUnavailable as exc:
            print(exc)
    """)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "the torchscript backend needs torch: pip install charlm[torch]"


def test_unavailable_backends_and_devices(fixtures):
    import onnxruntime

    entry = fixtures["stream-gpt"][0]
    with pytest.raises(BackendUnavailable, match="no torchscript file"):
        Generator.load(entry, backend="torchscript")
    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        with pytest.raises(BackendUnavailable, match="CUDA") as info:
            Generator.load(entry, device="cuda")
        assert "\n" not in str(info.value)
    if not torch.cuda.is_available():
        with pytest.raises(BackendUnavailable, match="CUDA"):
            Generator.load(fixtures["names-gpt"][0], backend="torchscript", device="cuda")


def test_threads_setting(fixtures, gens):
    """Rows split across two concurrent graph calls give the same text as one call."""
    from engine.runners import MIN_SPAN

    n = 2 * MIN_SPAN + 4  # enough rows for two spans
    gen = Generator.load(fixtures["names-gpt"][0], threads=2, slots=n)
    assert gen.engine.threads == 2
    prompts = (["", "ab", "abcdefghij", "e"] * n)[:n]
    params = [SamplingParams(seed=i, max_new_tokens=20) for i in range(n)]
    assert gen.generate(prompts, params) == gens["names-gpt"].generate(prompts, params)
    with pytest.raises(ValueError):
        Generator.load(fixtures["names-gpt"][0], threads=0)
    with pytest.raises(ValueError):
        Generator.load(fixtures["names-gpt"][0], slots=0)


def test_sampling_params_validation():
    for bad in (
        {"temperature": -1},
        {"top_k": 0},
        {"top_p": 0},
        {"top_p": 1.5},
        {"temperature": float("nan")},
    ):
        with pytest.raises(ValueError):
            SamplingParams(**bad)
    assert SamplingParams(stop=["a", "b"]).stop == ("a", "b")
    assert SamplingParams(stop="ab").stop == ("ab",)


def test_empty_call_and_mismatched_params(gens):
    gen = gens["names-gpt"]
    assert gen.generate([], []) == []
    with pytest.raises(ValueError):
        gen.generate(["a", "b"], [GREEDY])


def test_sampler_rows_are_independent():
    """The numpy sampler on its own: a row's draw depends only on its logits, params and RNG."""
    from engine.sampling import Sampler

    rng = np.random.default_rng(0)
    logits = rng.normal(size=(6, 40)).astype(np.float32) * 3
    params = [SamplingParams(seed=i, top_k=5 + i, top_p=0.6 + 0.05 * i) for i in range(6)]

    def sampler_of(params: list[SamplingParams]) -> Sampler:
        sampler = Sampler(len(params), 40)
        for row, p in enumerate(params):
            sampler.set(row, p)
        return sampler

    together = sampler_of(params).sample(np.arange(6), logits)
    alone = [int(sampler_of([p]).sample(np.arange(1), logits[i : i + 1])[0]) for i, p in enumerate(params)]
    assert together.tolist() == alone
    # A moved slot keeps its settings and its RNG's place in the stream.
    moved = sampler_of([SamplingParams(temperature=0), params[5]])
    moved.move(1, 0)
    assert int(moved.sample(np.arange(1), logits[5:6])[0]) == alone[5]
    # top_k=3: only ever one of the 3 largest logits.
    counts = np.zeros(40, int)
    sampler = sampler_of([SamplingParams(seed=1, top_k=3)])
    for _ in range(300):
        counts[sampler.sample(np.arange(1), logits[:1])[0]] += 1
    assert set(np.flatnonzero(counts)) <= set(np.argsort(-logits[0])[:3].tolist())


SHIPPED = REPO / "models"


@pytest.mark.skipif(not (SHIPPED / "shakespeare-gpt" / "manifest.json").is_file(), reason="no shipped models")
def test_shipped_models_scan_clean_and_backends_agree():
    repo = scan_repository(SHIPPED)
    assert not repo.failed, repo.failed
    for entry in repo.models.values():
        prompt = "ROMEO:" if entry.manifest.format == "stream" else "em"
        params = [SamplingParams(temperature=0, max_new_tokens=40), SamplingParams(seed=3, max_new_tokens=40)]
        results = [
            _texts(Generator.load(entry, backend=backend).generate([prompt, ""], params))
            for backend in entry.manifest.files
        ]
        assert all(r == results[0] for r in results), entry.name


# ---------------------------------------------------------------- the slot engine itself


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


class _Recording:
    """The real backend, with the batch size of every call written down."""

    def __init__(self, backend, widths: bool = False):
        self.backend, self.batches, self.widths = backend, [], widths

    def run(self, inputs):
        self.batches.append(inputs[0].shape if self.widths else len(inputs[0]))
        return self.backend.run(inputs)


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
