"""What the export tests share: one tiny randomly initialised net per family saved as a checkpoint, and
the exported files loaded as a consumer would (onnxruntime, torch.jit.load)."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from training.checkpoint import CheckpointMeta, SplitInfo, save_checkpoint
from training.nets import build

LINES_VOCAB = list(".abcdefghijklmnopqrstuvwxyz")
STREAM_VOCAB = list("\n !',.?abcdefghijklmnopqrstuvwxyz")
REPO = Path(__file__).resolve().parents[2]
# One tiny net per family; mlp is a `stream` model so that both text formats go through the card.
MODELS = {
    "bigram": ("lines", {}),
    "mlp": ("stream", {"block_size": 3, "n_embd": 4, "n_hidden": 16}),
    "wavenet": ("lines", {"block_size": 8, "n_embd": 4, "n_hidden": 16}),
    "gpt": ("lines", {"block_size": 16, "n_layer": 2, "n_head": 2, "n_embd": 16}),
}
ARCHS = list(MODELS)
TOL = 1e-4


def make_checkpoint(folder: Path, arch: str, *, losses: bool = True, seed: int = 0) -> Path:
    """A randomly initialised (not trained) net saved as a checkpoint with made-up metadata."""
    fmt, extra = MODELS[arch]
    vocab = LINES_VOCAB if fmt == "lines" else STREAM_VOCAB
    config = {"vocab_size": len(vocab), **extra}
    torch.manual_seed(seed)
    net = build(arch, config)
    with torch.no_grad():  # non-trivial weights and BatchNorm statistics: train mode would differ from eval
        for p in net.parameters():
            p.normal_(0.0, 0.5)
        for name, b in net.named_buffers():
            if name.endswith("running_mean"):
                b.normal_(0.0, 0.5)
            elif name.endswith("running_var"):
                b.uniform_(0.5, 2.0)
    meta = CheckpointMeta(
        arch=arch,
        model=config,
        vocab=vocab,
        format=fmt,
        boundary_token=0 if fmt == "lines" else None,
        data=SplitInfo(name="names", sha256="ab" * 32, split_seed=42, split_fractions=(0.8, 0.1, 0.1)),
        train_config={"name": f"test-{arch}", "arch": arch, "max_steps": 10},
        step=10,
        train_loss=2.5 if losses else None,
        val_loss=2.6 if losses else None,
        test_loss=2.7 if losses else None,
        wall_seconds=3.5,
    )
    save_checkpoint(folder, net, meta)
    return folder


def load_eager(ckpt: Path) -> torch.nn.Module:
    from training.checkpoint import load_checkpoint

    return load_checkpoint(ckpt)[0]


def ort_session(path: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def ts_module(path: Path) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return torch.jit.load(str(path))
