"""Tiny random models exported with training.export (the shipped path), shared by the engine tests.

Weights are scaled up so that distributions are peaked and greedy choices are far from ties. Built once
per session even when several test modules import the fixture.
"""

from __future__ import annotations

import string
from pathlib import Path

import torch

from contract.repository import ModelEntry, scan_repository
from training.checkpoint import CheckpointMeta, SplitInfo, load_checkpoint, save_checkpoint
from training.export import export_checkpoint
from training.nets import build

# The eager references are tiny: on a busy 2-core box a second torch thread only waits for a core.
torch.set_num_threads(1)

NAMES_VOCAB = [".", *string.ascii_lowercase]
STREAM_VOCAB = sorted(set("\n !',.:;?" + string.ascii_lowercase + "ABCDE"))

# name -> (arch, net config, format, export formats)
SPECS = {
    "names-gpt": (
        "gpt",
        {"block_size": 8, "n_layer": 2, "n_head": 2, "n_embd": 32},
        "lines",
        ("onnx", "torchscript"),
    ),
    "stream-gpt": ("gpt", {"block_size": 8, "n_layer": 2, "n_head": 4, "n_embd": 32}, "stream", ("onnx",)),
    "names-wavenet": ("wavenet", {"block_size": 8, "n_embd": 8, "n_hidden": 32}, "lines", ("onnx",)),
    "stream-mlp": ("mlp", {"block_size": 3, "n_embd": 8, "n_hidden": 32}, "stream", ("onnx",)),
}


def _sharpen(arch: str, net: torch.nn.Module) -> None:
    """Random init is near-uniform; scale weights so argmax is robust and names end at varied lengths."""
    with torch.no_grad():
        if arch == "gpt":  # tied embeddings make a random GPT repeat its input: make the rest louder
            for name, p in net.named_parameters():
                if p.dim() >= 2:
                    p.mul_(5.0 if name == "wte.weight" else 20.0)
        else:
            net.head.weight.mul_(40.0)


_BUILT: dict[str, tuple[ModelEntry, torch.nn.Module, Path]] = {}


def build_fixtures(tmp_path_factory) -> dict[str, tuple[ModelEntry, torch.nn.Module, Path]]:
    """name -> (repository entry of the exported model, eager net, checkpoint folder); built once."""
    if _BUILT:
        return _BUILT
    root = tmp_path_factory.mktemp("engine")
    models_dir = root / "models"
    torch.manual_seed(1234)
    out = {}
    for name, (arch, cfg, fmt, formats) in SPECS.items():
        vocab = NAMES_VOCAB if fmt == "lines" else STREAM_VOCAB
        cfg = {"vocab_size": len(vocab), **cfg}
        net = build(arch, cfg).eval()
        _sharpen(arch, net)
        meta = CheckpointMeta(
            arch=arch,
            model=cfg,
            vocab=vocab,
            format=fmt,
            boundary_token=0 if fmt == "lines" else None,
            data=SplitInfo(name="test", sha256="0" * 64, split_seed=0, split_fractions=(0.8, 0.1, 0.1)),
            train_config={},
            train_loss=3.0,
            val_loss=3.0,
            test_loss=3.0,
        )
        ckpt = root / "ckpt" / name
        save_checkpoint(ckpt, net, meta)
        export_checkpoint(ckpt, models_dir / name, formats=formats)
    repo = scan_repository(models_dir)
    assert not repo.failed, repo.failed
    for name in SPECS:
        net, _ = load_checkpoint(root / "ckpt" / name)
        out[name] = (repo.models[name], net, root / "ckpt" / name)
    _BUILT.update(out)
    return out


def texts_of(completions) -> list[tuple[str, str]]:
    return [(c.text, c.finish_reason) for c in completions]


class BackendSpy:
    """A real backend put in place of an engine runner's own (`engine.runner.backend = Spy(...)`), seeing
    every graph call the runner makes, plain (`run`) and bound (`run_decode`, which the decode steps
    of an ONNX GPT take); subclasses note what they look at in `note`."""

    def __init__(self, backend):
        self.backend = backend

    @property
    def decode_in_place(self) -> bool:
        return getattr(self.backend, "decode_in_place", False)

    def note(self, inputs) -> None:
        """Called before each graph call with its inputs."""

    def run(self, inputs):
        self.note(inputs)
        return self.backend.run(inputs)

    def run_decode(self, inputs, views):
        self.note(inputs)
        return self.backend.run_decode(inputs, views)
