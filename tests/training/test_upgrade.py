"""`python -m training upgrade` (v1 folder -> graph contract v2) and `export --from-model`.

The v1 fixture is built as the v1 exporter left a folder: a schema-1 manifest, a model card and a
TorchScript file of a wrapper holding the net as `net` (upgrade reads only the weights inside it), for
a tiny net with the real names data record, so that re-verification measures a real test loss.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_model

from contract import Manifest, sha256_of
from training.data import Vocab, load_corpus, sequence_examples, split_corpus, window_examples
from training.export.cli import main_export, main_upgrade
from training.export.graphs import WindowGraph
from training.nets import build, n_params

CONFIGS = {
    "gpt": {"block_size": 16, "n_layer": 2, "n_head": 2, "n_embd": 16},
    "wavenet": {"block_size": 8, "n_embd": 4, "n_hidden": 16},
}
OLD_COMMAND = "python -m training export runs/old --out models/old"


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def names():
    corpus = load_corpus("names", None, "lines")
    vocab = Vocab.build(corpus.text, corpus.format)
    return corpus, vocab, split_corpus(corpus, vocab, 42)


def make_v1_folder(folder: Path, arch: str, names, loss_offset: float = 0.0) -> torch.nn.Module:
    """A v1 model folder of a small random net, its manifest's test loss the net's true one (+ offset)."""
    corpus, vocab, splits = names
    config = {"vocab_size": len(vocab.chars), **CONFIGS[arch]}
    torch.manual_seed(0)
    net = build(arch, config)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.3 * torch.randn_like(p))
        for name, b in net.named_buffers():
            if name.endswith("running_var"):
                b.uniform_(0.5, 2.0)
    net.eval()
    folder.mkdir(parents=True)
    block = config["block_size"]
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(WindowGraph(net).eval(), (torch.zeros(2, block, dtype=torch.long),))
        traced.save(str(folder / "model.ts"))
    test = splits.get("test")
    with torch.no_grad():
        if arch == "gpt":
            x, y = sequence_examples(test, block, 0)
        else:
            x, y = window_examples(test, block, 0)
        logits = net(torch.from_numpy(x))[0]
        loss = F.cross_entropy(logits.flatten(0, -2), torch.from_numpy(y).flatten(), ignore_index=-1).item()
    gpt = {"n_layer": 2, "n_head": 2, "head_dim": 8} if arch == "gpt" else {}
    ts = folder / "model.ts"
    manifest = {
        "schema_version": 1,
        "name": folder.name,
        "arch": arch,
        "n_params": n_params(net),
        "vocab": list(vocab.chars),
        "format": "lines",
        "boundary_token": 0,
        "block_size": block,
        **gpt,
        "files": {"torchscript": {"path": "model.ts", "bytes": ts.stat().st_size, "sha256": sha256_of(ts)}},
        "metrics": {"train_loss": 2.5, "val_loss": 2.6, "test_loss": loss + loss_offset},
        "data": {"name": "names", "sha256": corpus.sha256, "split_seed": 42, "split_fractions": [0.8, 0.1, 0.1]},
        "training": {
            "config": {"name": f"old_{arch}", "arch": arch, "model": {**CONFIGS[arch], "dropout": 0.1}},
            "steps": 10,
            "wall_seconds": 3.5,
            "device": "cpu",
            "torch_version": torch.__version__,
        },
        "created_at": "2026-11-22T06:21:08Z",
    }
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2))
    (folder / "README.md").write_text(f"# {folder.name}\n\n```sh\n{OLD_COMMAND}\n```\n")
    return net


@pytest.fixture(scope="module")
def upgraded(tmp_path_factory, names):
    """Each arch's v1 folder, upgraded once: (folder, the original net)."""
    root = tmp_path_factory.mktemp("upgrade")
    out = {}
    for arch in CONFIGS:
        folder = root / "models" / f"old-{arch}"
        net = make_v1_folder(folder, arch, names)
        assert main_upgrade([str(folder)]) == 0
        out[arch] = (folder, net)
    return out


def _one_line_error(capsys, code: int, needle: str) -> None:
    assert code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err, err
    assert needle in err, err


@pytest.mark.parametrize("arch", list(CONFIGS))
def test_upgrade_rebuilds_the_net_and_keeps_the_record(upgraded, arch):
    folder, net = upgraded[arch]
    manifest = Manifest.load(folder)
    manifest.verify_files(folder)
    assert sorted(p.name for p in folder.iterdir()) == [
        "README.md",
        "data_hashes.bin",  # a lines model whose data is at hand: the novelty hash set
        "manifest.json",
        *(["model.decode.onnx"] if arch == "gpt" else []),  # GPT: the graph for decode steps
        "model.onnx",
        "model.safetensors",
        "model.ts",
    ]
    assert not [p.name for p in folder.parent.iterdir() if p.name.startswith(".")]  # no staging left
    want = {"vocab_size": 27, **CONFIGS[arch]}
    if arch == "gpt":
        want |= {"dropout": 0.1, "bias": True}  # dropout from the training config, bias from the weights
    assert manifest.net_config == want
    rebuilt = build(arch, manifest.net_config)
    load_model(rebuilt, str(folder / "model.safetensors"), strict=True)
    for (k, a), b in zip(net.state_dict().items(), rebuilt.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    assert (manifest.metrics.train_loss, manifest.metrics.val_loss) == (2.5, 2.6)
    assert manifest.training.config["name"] == f"old_{arch}" and manifest.training.steps == 10
    assert manifest.n_params == n_params(net)
    assert OLD_COMMAND in (folder / "README.md").read_text()  # the card keeps the model's provenance


def test_upgraded_gpt_serves_the_v2_step(upgraded):
    import onnxruntime as ort

    folder, net = upgraded["gpt"]
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    idx = np.random.default_rng(0).integers(0, 27, (3, 16), dtype=np.int64)
    feeds = {"idx": idx, "pos": np.zeros(3, np.int64)}
    for j, inp in enumerate(session.get_inputs()[2:]):
        feeds[inp.name] = np.zeros((3, 2, 8, 0) if j % 2 == 0 else (3, 2, 0, 8), np.float32)
    logits = session.run(["logits"], feeds)[0]
    with torch.no_grad():
        assert np.abs(logits - net(torch.from_numpy(idx))[0].numpy()).max() <= 1e-4


def test_upgrade_of_a_v2_folder_is_a_no_op(upgraded, capsys):
    folder, _ = upgraded["wavenet"]
    before = (folder / "manifest.json").read_bytes()
    assert main_upgrade([str(folder)]) == 0
    assert "already schema_version 2" in capsys.readouterr().out
    assert (folder / "manifest.json").read_bytes() == before


def test_upgrade_that_fails_verification_changes_nothing(tmp_path, names, capsys):
    folder = tmp_path / "models" / "off"
    make_v1_folder(folder, "wavenet", names, loss_offset=0.01)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    _one_line_error(capsys, main_upgrade([str(folder)]), "ONNX test loss")
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert [p.name for p in (tmp_path / "models").iterdir()] == ["off"]  # no staging folder left


def test_upgrade_errors(tmp_path, names, capsys):
    _one_line_error(capsys, main_upgrade([str(tmp_path / "nope")]), "no such model folder")
    (tmp_path / "empty").mkdir()
    _one_line_error(capsys, main_upgrade([str(tmp_path / "empty")]), "not a model folder")
    folder = tmp_path / "models" / "tampered"
    make_v1_folder(folder, "wavenet", names)
    raw = json.loads((folder / "manifest.json").read_text())
    (folder / "manifest.json").write_text(json.dumps({**raw, "schema_version": 7}))
    _one_line_error(capsys, main_upgrade([str(folder)]), "schema_version 7")
    (folder / "manifest.json").write_text(json.dumps(raw))
    with open(folder / "model.ts", "ab") as fh:
        fh.write(b"x")
    _one_line_error(capsys, main_upgrade([str(folder)]), "sha256 does not match")
    assert main_upgrade(["--help"]) == 0


def test_export_from_model(upgraded, tmp_path, capsys):
    """A v2 folder re-exports from its own weights and net_config, without any run directory."""
    src, _ = upgraded["gpt"]
    out = tmp_path / "again"
    assert main_export(["--from-model", str(src), "--out", str(out), "--name", "again"]) == 0
    old, new = Manifest.load(src), Manifest.load(out)
    assert new.name == "again" and new.net_config == old.net_config and new.metrics == old.metrics
    assert new.weights.sha256 == old.weights.sha256 and new.training == old.training
    assert f"--from-model {src}" in (out / "README.md").read_text()
    capsys.readouterr()
    _one_line_error(capsys, main_export(["--from-model", str(src), "--out", str(out)]), "already exists")
    _one_line_error(capsys, main_export(["ckpt", "--from-model", str(src), "--out", str(out)]), "either CKPT_DIR")


def test_upgrade_rewrites_an_old_decode_graph(upgraded, tmp_path, capsys):
    """A v2 GPT folder listing a decode graph of the old contract (the step graph's I/O, as a copy of
    model.onnx has) gets the in-place one; every other file stays byte for byte, the card's line follows."""
    from training.export.decode_rewrite import stale_decode
    from training.export.manifest import file_entry

    folder = tmp_path / "models" / "old-decode"
    shutil.copytree(upgraded["gpt"][0], folder)
    shutil.copyfile(folder / "model.onnx", folder / "model.decode.onnx")
    manifest = Manifest.load(folder)
    manifest.model_copy(update={"onnx_decode": file_entry(folder / "model.decode.onnx")}).save(folder)
    kept = {p.name: p.read_bytes() for p in folder.iterdir() if p.name not in ("manifest.json", "README.md")}
    del kept["model.decode.onnx"]
    assert stale_decode(folder) and not stale_decode(upgraded["gpt"][0])
    assert main_upgrade([str(folder)]) == 0
    assert "rewrote" in capsys.readouterr().out and not stale_decode(folder)
    new = Manifest.load(folder)
    new.verify_files(folder)
    assert new.model_copy(update={"onnx_decode": None}) == manifest.model_copy(update={"onnx_decode": None})
    assert all((folder / name).read_bytes() == data for name, data in kept.items())
    assert (folder / "model.decode.onnx").read_bytes() == (upgraded["gpt"][0] / "model.decode.onnx").read_bytes()
    assert f"{new.onnx_decode.bytes:,} bytes, sha256 `{new.onnx_decode.sha256}`" in (folder / "README.md").read_text()
    assert sorted(p.name for p in folder.parent.iterdir()) == ["old-decode"]  # no staging folder left
    assert main_upgrade([str(folder)]) == 0 and "already schema_version 2" in capsys.readouterr().out
