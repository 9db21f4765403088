"""The training tests' shared run: one tiny GPT trained once per session (the reference for resume; a
checkpoint for the error tests)."""

from pathlib import Path

import pytest

from tests.support.training_cli import TINY_GPT, charlm, ok


@pytest.fixture(scope="session")
def gpt_run(tmp_path_factory) -> Path:
    """A tiny GPT trained 20 steps in one go (the reference for resume; a checkpoint for the rest)."""
    out = tmp_path_factory.mktemp("gpt") / "straight"
    ok(charlm("train", *TINY_GPT, "--set", "max_iters=20", "--out", str(out)))
    return out
