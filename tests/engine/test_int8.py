"""The optional int8 ONNX graph (issue 19 item 4): `training export --int8` / `python -m training.export.quantize`
write it with its own test loss only when that loss rises by <= 0.01, the float files untouched; manifests
without it stay valid; `serve --precision int8` serves it for the models that have one, and /v1/models
says which precision each model runs at (real server, real HTTP)."""

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from contract import INT8_FILE, MANIFEST_FILE, Manifest
from contract.precision import at_precision, served_precision
from contract.repository import scan_repository
from tests.support.serving import running_server

REPO = Path(__file__).resolve().parents[2]
SMALL, OTHER = "names-wavenet", "names-gpt"  # names-wavenet: the smallest test split to score twice


def _float_only_copy(name: str, dest: Path) -> Path:
    """A shipped folder without any int8 graph (what every folder was before this feature)."""
    folder = dest / name
    shutil.copytree(REPO / "models" / name, folder)
    (folder / INT8_FILE).unlink(missing_ok=True)
    raw = json.loads((folder / MANIFEST_FILE).read_text())
    raw.pop("onnx_int8", None)
    (folder / MANIFEST_FILE).write_text(json.dumps(raw, indent=2) + "\n")
    return folder


def _digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir() if p.name != MANIFEST_FILE}


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=600, cwd=REPO)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """names-wavenet quantized by the real command beside a float-only names-gpt; the command's run."""
    root = tmp_path_factory.mktemp("models")
    small, _ = _float_only_copy(SMALL, root), _float_only_copy(OTHER, root)
    before = _digests(small)
    run = _run("-m", "training.export.quantize", str(small))
    return root, before, run


def test_quantize_adds_int8_graph_and_its_loss_leaving_float_files_as_they_were(models):
    root, before, run = models
    assert run.returncode == 0, run.stderr
    folder = root / SMALL
    manifest = Manifest.load(folder)
    manifest.verify_files(folder)  # the int8 file's size and sha256 too
    q = manifest.onnx_int8
    assert q is not None and q.file.path == INT8_FILE
    assert 0 <= q.test_loss - q.float_test_loss <= 0.01
    assert abs(q.float_test_loss - manifest.metrics.test_loss) <= 1e-4  # the float graph scored as verify does
    assert f"{SMALL}: int8 test loss {q.test_loss:.4f} vs float {q.float_test_loss:.4f}" in run.stdout
    after = _digests(folder)
    assert {k: after[k] for k in before} == before and set(after) - set(before) == {INT8_FILE}
    assert (folder / INT8_FILE).stat().st_size < min(12_000_000, (folder / "model.onnx").stat().st_size)


def test_export_int8_flag_writes_it_with_the_export(tmp_path):
    src = _float_only_copy(SMALL, tmp_path / "src")
    run = _run("-m", "training", "export", "--from-model", str(src), "--out", str(tmp_path / "out"), "--int8")
    assert run.returncode == 0, run.stderr
    manifest = Manifest.load(tmp_path / "out")
    manifest.verify_files(tmp_path / "out")
    assert manifest.onnx_int8 is not None and f"wrote {INT8_FILE}" in run.stdout.splitlines()[-1]


def test_manifest_without_int8_stays_valid_and_float32(models):
    root, _, _ = models
    entry = scan_repository(root).models[OTHER]
    assert entry.manifest.onnx_int8 is None
    assert at_precision(entry, "int8") is entry and served_precision(entry.manifest) == "float32"


def test_the_engine_runs_the_int8_graph_when_asked(models):
    from engine import Generator, SamplingParams

    root, _, _ = models
    entry = scan_repository(root).models[SMALL]
    int8 = at_precision(entry, "int8")
    assert int8.manifest.files["onnx"].path == INT8_FILE and served_precision(int8.manifest) == "int8"
    assert served_precision(at_precision(entry, "float32").manifest) == "float32"
    params = [SamplingParams(temperature=0.0, max_new_tokens=8, logprobs=0, ignore_eos=True)]
    runs = [Generator.load(e, backend="onnx", slots=1).generate(["em"], params)[0] for e in (entry, int8)]
    scores = [[t.logprob for t in c.logprobs] for c in runs]
    assert len(scores[0]) == len(scores[1]) == 8
    assert scores[0] != scores[1]  # another graph's numbers ...
    assert max(abs(a - b) for a, b in zip(*scores, strict=True)) < 0.5  # ... of the same model


def test_serve_precision_int8_serves_int8_where_there_is_one(models):
    root, _, _ = models
    manifest = Manifest.load(root / SMALL)
    for args, want in ((("--precision", "int8"), "int8"), ((), "float32")):
        with running_server(*args, models=root) as srv, httpx.Client(base_url=srv.base_url, timeout=60) as client:
            cards = {c["id"]: c for c in client.get("/v1/models").json()["data"]}
            assert cards[OTHER]["precision"] == "float32"
            assert cards[SMALL]["precision"] == want
            loss = manifest.onnx_int8.test_loss if want == "int8" else manifest.metrics.test_loss
            assert cards[SMALL]["test_loss"] == pytest.approx(loss)
            assert client.get(f"/v1/models/{SMALL}").json()["precision"] == want
            r = client.post("/v1/completions", json={"model": SMALL, "prompt": "em", "max_tokens": 5, "seed": 1})
            assert r.status_code == 200, r.text
            assert r.json()["choices"][0]["text"] != "" or r.json()["choices"][0]["finish_reason"] == "stop"


def test_int8_is_not_shipped_when_the_loss_rises_too_much(tmp_path, monkeypatch):
    from training.export import quantize

    folder = _float_only_copy(SMALL, tmp_path)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    monkeypatch.setattr(quantize, "MAX_LOSS_RISE", -1.0)  # any rise at all is too much
    outcome = quantize.add_int8(folder)
    assert not outcome.shipped and "not shipped" in outcome.line()
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before  # nothing written, no temp file left


def test_bad_int8_requests_are_one_line_exit_2(tmp_path):
    runs = [
        _run("-m", "service", "serve", "--precision", "int8", "--backend", "torchscript", "--models", str(tmp_path)),
        _run("-m", "service", "serve", "--precision", "int4", "--models", str(tmp_path)),
        _run(
            "-m",
            "training",
            "export",
            str(tmp_path),
            "--out",
            str(tmp_path / "m"),
            "--formats",
            "torchscript",
            "--int8",
        ),
        _run("-m", "training.export.quantize", str(tmp_path / "nope")),
    ]
    for run, needle in zip(
        runs, ("--backend onnx", "int4", "add onnx to --formats", "not a model folder"), strict=True
    ):
        assert run.returncode == 2, run.stderr
        lines = run.stderr.strip().splitlines()
        assert len(lines) == 1 and needle in lines[0] and "Traceback" not in run.stderr


def test_the_fused_gpt_graph_quantizes(tmp_path):
    """The GPT step graph is written with com.microsoft kernels, where ONNX shape inference stops: the
    quantizer must still type every tensor (it failed with "Unable to find data type for weight_name")."""
    import numpy as np
    import onnxruntime as ort

    from contract import key_shape, past_names, value_shape
    from training.export.quantize import quantize_graph

    src = REPO / "models" / OTHER / "model.onnx"
    quantize_graph(src, tmp_path / INT8_FILE)
    manifest = Manifest.load(REPO / "models" / OTHER)
    h, d = manifest.n_head, manifest.head_dim
    feeds = {"idx": np.array([[0, 5, 13, 1, 14]], np.int64), "pos": np.zeros(1, np.int64)}
    for j, name in enumerate(past_names(manifest.n_layer)):
        feeds[name] = np.zeros(key_shape(1, h, d, 0) if j % 2 == 0 else value_shape(1, h, d, 0), np.float32)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    logits = [
        ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"]).run(["logits"], feeds)[0][0]
        for path in (src, tmp_path / INT8_FILE)
    ]
    assert not np.array_equal(logits[0], logits[1])  # int8 weights ...
    assert np.abs(logits[0] - logits[1]).max() < 0.5  # ... of the same model
    assert (logits[0].argmax(-1) == logits[1].argmax(-1)).mean() >= 0.8
