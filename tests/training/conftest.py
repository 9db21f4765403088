"""The training tests' shared fixtures: one tiny GPT trained once per session (the reference for resume; a
checkpoint for the error tests), each family exported once, and one torch thread for in-process work."""

from pathlib import Path

import pytest
import torch

from contract import Manifest
from tests.support.exports import ARCHS, make_checkpoint
from tests.support.training_cli import TINY_GPT, charlm, ok
from training.export import export_checkpoint


@pytest.fixture(scope="session")
def gpt_run(tmp_path_factory) -> Path:
    """A tiny GPT trained 20 steps in one go (the reference for resume; a checkpoint for the rest)."""
    out = tmp_path_factory.mktemp("gpt") / "straight"
    ok(charlm("train", *TINY_GPT, "--set", "max_iters=20", "--out", str(out)))
    return out


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """Tiny models gain nothing from intra-op threads, and on busy shared cores the spinning costs."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def exported(tmp_path_factory) -> dict[str, tuple[Path, Path, Manifest]]:
    """Each family exported once (both formats); tests share the folders and must not modify them."""
    root = tmp_path_factory.mktemp("export")
    out = {}
    for arch in ARCHS:
        ckpt = make_checkpoint(root / "ckpt" / arch, arch)
        model_dir = root / "models" / f"test-{arch}"
        out[arch] = (ckpt, model_dir, export_checkpoint(ckpt, model_dir))
    return out
