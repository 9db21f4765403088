"""The engine's backends and the model repository: the torch-free ONNX path, TorchScript without torch,
unavailable devices, threads, the shipped models' scan, and SamplingParams' and the sampler's own rules."""

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
    Generator,
    SamplingParams,
)
from tests.support.engine_fixtures import texts_of

REPO = Path(__file__).resolve().parents[2]
GREEDY = SamplingParams(temperature=0)


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
    from engine.spans import MIN_SPAN

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


def test_a_seeded_row_draws_its_rngs_stream_one_uniform_a_token():
    """The sampler draws its uniforms UNIFORMS at a time: a seeded row still takes exactly the next
    uniform of its own stream per token, alone or beside others, on either path (one row or many),
    across refills and after a move. Flat logits over a large vocabulary make the token the uniform
    itself: token = floor(u * vocab)."""
    from engine.sampling import UNIFORMS, Sampler

    vocab, steps = 4096, 3 * UNIFORMS + 5
    flat = np.zeros((2, vocab), dtype=np.float32)
    sampler = Sampler(3, vocab)
    sampler.set(0, SamplingParams(seed=7))
    sampler.set(2, SamplingParams(seed=8))
    stream = np.random.default_rng(7)
    other = np.random.default_rng(8)
    for step in range(steps):
        if step == UNIFORMS + 3:  # row 2 leaves, row 0 moves into slot 1 (a compaction)
            sampler.release(2)
            sampler.move(0, 1)
        mine = 1 if step > UNIFORMS + 2 else 0
        rows = np.array([mine]) if step % 3 == 0 or step > UNIFORMS + 2 else np.array([0, 2])
        got = sampler.sample(rows, flat[: len(rows)])
        expected = [int(stream.random() * vocab)] + ([int(other.random() * vocab)] if len(rows) == 2 else [])
        assert got.tolist() == expected, step


def test_the_sampler_cuts_while_a_live_row_asks_for_it():
    """A batch skips top-k / top-p only while no live row asks for them: a top-k row keeps its cut
    when a plain row leaves beside it, and a plain row that takes a released top-k slot draws freely."""
    from engine.sampling import Sampler

    logits = np.random.default_rng(1).normal(size=(1, 40)).astype(np.float32)
    sampler = Sampler(2, 40)
    sampler.set(0, SamplingParams(seed=1, top_k=1))
    sampler.set(1, SamplingParams(seed=2))
    sampler.release(1)
    assert {int(sampler.sample(np.arange(1), logits)[0]) for _ in range(50)} == {int(logits.argmax())}
    sampler.release(0)
    sampler.set(0, SamplingParams(seed=3))
    assert len({int(sampler.sample(np.arange(1), logits)[0]) for _ in range(200)}) > 3


SHIPPED = REPO / "models"


@pytest.mark.skipif(not (SHIPPED / "shakespeare-gpt" / "manifest.json").is_file(), reason="no shipped models")
def test_shipped_models_scan_clean_and_backends_agree():
    repo = scan_repository(SHIPPED)
    assert not repo.failed, repo.failed
    for entry in repo.models.values():
        prompt = "ROMEO:" if entry.manifest.format == "stream" else "em"
        params = [SamplingParams(temperature=0, max_new_tokens=40), SamplingParams(seed=3, max_new_tokens=40)]
        results = [
            texts_of(Generator.load(entry, backend=backend).generate([prompt, ""], params))
            for backend in entry.manifest.files
        ]
        assert all(r == results[0] for r in results), entry.name
