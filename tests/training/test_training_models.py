"""Shipped model folders as checkpoints (`training sample|eval models/NAME`, `train --init-from`), and
one decoder: training's samples go through the service engine (TorchEagerBackend) and match the
server's ONNX engine token for token.

Fast: the shipped names models are read, never rewritten; fine-tuning runs a few steps of a tiny data file.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from contract import Manifest  # noqa: E402
from contract.repository import ModelEntry  # noqa: E402
from engine import Engine, Generator, SamplingParams  # noqa: E402
from engine.backends import TorchEagerBackend  # noqa: E402
from engine.engine import model_spec  # noqa: E402
from training.checkpoint import load_checkpoint  # noqa: E402
from training.sample import complete, sample_texts  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
MODELS = ROOT / "models"
DATA_DIR = Path(os.environ.get("CHARLM_DATA_DIR") or ROOT.parent / "shared" / "data")
HAVE_NAMES = (DATA_DIR / "names.txt").is_file()
FAST = [
    "--set", "max_iters=4", "--set", "eval_interval=2", "--set", "eval_iters=1", "--set", "batch_size=8",
    "--set", "warmup_iters=1", "--set", "samples=2", "--set", "threads=1", "--set", "tensorboard=false",
]  # fmt: skip


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def charlm(*args: str) -> subprocess.CompletedProcess:
    environ = {**os.environ, "CHARLM_DATA_DIR": str(DATA_DIR), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "training", *args], cwd=ROOT, env=environ, capture_output=True, text=True, timeout=600
    )


def one_line_error(proc: subprocess.CompletedProcess, *fragments: str) -> str:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


# --- one decoder ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["names-gpt", "names-wavenet", "shakespeare-gpt"])
def test_eager_engine_matches_the_onnx_engine(name: str) -> None:
    """Same seeds, same rules: the eager net through the engine gives the server's text (ONNX)."""
    folder = MODELS / name
    manifest = Manifest.load(folder)
    net, meta = load_checkpoint(folder)
    stream = manifest.format == "stream"
    params = [SamplingParams(seed=s, top_k=20, max_new_tokens=150 if stream else None) for s in range(4)]
    prompts = ["ROMEO:\n", "", "KI", "a"] if stream else ["", "ka", "", "mi"]
    onnx = Generator.load(ModelEntry(name, folder, manifest), "onnx", slots=4).generate(prompts, params)
    spec = model_spec(name, meta.arch, meta.vocab, meta.boundary_token, manifest.block_size,
                      manifest.n_layer, manifest.n_head, manifest.head_dim)  # fmt: skip
    eager = Generator(Engine.from_backend(spec, TorchEagerBackend(net, spec), slots=2))
    assert eager.engine.backend == "torch" and eager.engine.device == "cpu"
    assert [c.text for c in eager.generate(prompts, params)] == [c.text for c in onnx]
    if stream:  # 150 new tokens after a 7-character prompt: past block_size 128, by the engine's rule
        assert all(c.completion_tokens == 150 for c in onnx)


def test_eager_backend_follows_the_graph_contract() -> None:
    net, _ = load_checkpoint(MODELS / "names-gpt")
    manifest = Manifest.load(MODELS / "names-gpt")
    backend = TorchEagerBackend(net, manifest)
    idx, pos = np.array([[0, 1, 2]]), np.array([0])
    past = [t.numpy() for t in net.empty_cache(1)]  # the contract's layouts, 0 columns
    out = backend.run([idx, pos, *past])
    assert len(out) == 9 and out[0].shape == (1, 3, 27) and out[1].shape == (1, 4, 24, 3)
    assert all(isinstance(a, np.ndarray) and a.dtype == np.float32 for a in out)
    with torch.no_grad():
        full = net(torch.from_numpy(idx))[0].numpy()
    np.testing.assert_allclose(out[0], full, atol=1e-5)


def test_sample_options_and_reproducibility() -> None:
    net, meta = load_checkpoint(MODELS / "names-gpt")
    a = sample_texts(net, meta, 6, prompt="ka", seed=7, top_k=5, top_p=0.9)
    assert a == sample_texts(net, meta, 6, prompt="ka", seed=7, top_k=5, top_p=0.9)
    assert all(t.startswith("ka") for t in a)
    greedy = sample_texts(net, meta, 3, prompt="ka", temperature=0)
    assert len(set(greedy)) == 1
    stopped = sample_texts(net, meta, 20, seed=3, stop=["a"])
    assert all("a" not in t for t in stopped)
    assert any(len(t) == 1 for t in sample_texts(net, meta, 4, prompt="k", seed=1, max_new_tokens=0))
    # choice i is seeded like the server's n: derive_seed(seed, i)
    done = complete(net, "gpt", meta.vocab, 0, 3, "", SamplingParams(seed=11))
    assert [c.text for c in done] == sample_texts(net, meta, 3, seed=11)


def test_card_samples_are_reproducible() -> None:
    from training.export.samples import draw_samples

    net, meta = load_checkpoint(MODELS / "names-wavenet")
    first = draw_samples(net, meta.arch, meta.vocab, meta.boundary_token)
    assert first == draw_samples(net, meta.arch, meta.vocab, meta.boundary_token) and len(first) == 10
    card = (MODELS / "names-wavenet" / "README.md").read_text()
    assert "\n".join(first) in card  # the shipped card shows exactly these


# --- model folders as checkpoints ------------------------------------------------------------------


def test_sample_a_model_folder_cli() -> None:
    proc = charlm("sample", "models/names-gpt", "-n", "3", "--seed", "1", "--prompt", "ka", "--top-k", "8",
                  "--top-p", "0.95", "--stop", "zz")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.splitlines()) == 3 and all(t.startswith("ka") for t in proc.stdout.splitlines())
    one_line_error(charlm("sample", "models/names-gpt", "--top-p", "1.5"), "top_p")
    one_line_error(charlm("sample", "models/names-gpt", "--prompt", "K!"), "outside the vocabulary", "'K'", "'!'")
    one_line_error(charlm("sample", "models/nope"), "no such checkpoint or model folder")


@pytest.mark.skipif(not HAVE_NAMES, reason="names.txt not available")
def test_eval_a_model_folder_reproduces_its_manifest() -> None:
    manifest = Manifest.load(MODELS / "names-wavenet")
    for split, want in (("test", manifest.metrics.test_loss), ("test_unseen", manifest.metrics.test_loss_unseen)):
        proc = charlm("eval", "models/names-wavenet", "--split", split)
        assert proc.returncode == 0, proc.stderr
        assert float(proc.stdout) == pytest.approx(want, abs=1e-4)


@pytest.mark.skipif(not HAVE_NAMES, reason="names.txt not available")
def test_shipped_names_models_report_unseen_loss_and_novelty() -> None:
    from engine.novelty import DataHashes

    for name, unseen in (("names-gpt", 1.9401), ("names-wavenet", 2.0029)):
        manifest = Manifest.load(MODELS / name)
        assert round(manifest.metrics.test_loss_unseen, 4) == unseen
        hashes = DataHashes.load(MODELS / name)
        assert len(hashes) == 29_494 and manifest.data_hashes.bytes == 8 * 29_494
        card = (MODELS / name / "README.md").read_text()
        assert f"{unseen:.4f}" in card and "## Novelty" in card and "of 2,000 samples" in card
        names = (DATA_DIR / "names.txt").read_text().split()
        assert not any(hashes.is_novel(n) for n in names[::500]) and hashes.is_novel("zzqxjv")


def test_fine_tune_a_shipped_model(tmp_path: Path) -> None:
    data = tmp_path / "pets.txt"
    data.write_text("\n".join(["rex", "fido", "bella", "max", "luna", "coco", "milo", "nala", "oscar", "ruby"] * 3))
    out = tmp_path / "run"
    proc = charlm("train", "--init-from", "models/names-wavenet", "--data", str(data), "--out", str(out), *FAST)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "fine-tuning models/names-wavenet" in proc.stdout
    meta = json.loads((out / "checkpoint.json").read_text())
    shipped = Manifest.load(MODELS / "names-wavenet")
    assert meta["vocab"] == shipped.vocab and meta["model"] == shipped.net_config
    assert meta["train_config"]["init_from"] == "models/names-wavenet" and meta["data"]["name"] == "pets"
    # started from the shipped weights: 4 steps cannot take a fresh net near ln(27) = 3.30 ...
    assert meta["test_loss"] < 3.0
    # ... and the fine-tuned checkpoint samples and evaluates with the shipped vocabulary
    assert charlm("eval", str(out), "--split", "val").returncode == 0
    # exported, its folder re-measures on its own data although that data lacks most of the vocabulary
    folder = tmp_path / "pets-wavenet"
    assert charlm("export", str(out), "--out", str(folder)).returncode == 0
    verify = charlm("verify", str(folder), "--data", str(data))
    assert verify.returncode == 0 and "diff 0.0000" in verify.stdout, verify.stdout + verify.stderr


def test_fine_tune_errors(tmp_path: Path) -> None:
    data = tmp_path / "odd.txt"
    data.write_text("Zoë\nmax\nrex\nfido\n")
    proc = charlm("train", "--init-from", "models/names-gpt", "--data", str(data), "--out", str(tmp_path / "o"))
    one_line_error(proc, "lacks", "'Z'", "'ë'")
    proc = charlm("train", "--init-from", "models/names-gpt", "--config", "names_wavenet", "--out", str(tmp_path / "o"))
    one_line_error(proc, "is a gpt", "wavenet")
    proc = charlm("train", "--init-from", "models/names-gpt", "--set", "model.n_layer=2", "--out", str(tmp_path / "o"))
    one_line_error(proc, "model.n_layer (4 -> 2)")
    one_line_error(charlm("train", "--init-from", str(tmp_path / "none"), "--out", str(tmp_path / "o")), "no such")
    data.write_text("max\nrex\nbartholomewalexander\nfido\n")  # 20 characters: names-gpt fits 15
    proc = charlm("train", "--init-from", "models/names-gpt", "--data", str(data), "--out", str(tmp_path / "o"))
    one_line_error(proc, "1 of 4 lines", "fixes block_size")
    assert "--set model.block_size" not in proc.stderr  # the one setting fine-tuning cannot change
    one_line_error(charlm("train", "--out", str(tmp_path / "o")), "--config")
