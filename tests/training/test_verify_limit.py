"""`python -m training verify --via URL --limit N` against a real server on the shipped models: a subset is
compared with model.onnx on the same subset (a subset's loss is not the split's: names-gpt's first 500
test names score 0.00875 away from the whole split's figure, which failed an exact server)."""

from __future__ import annotations

import re

import pytest

from tests.support.serving import MODELS, ServerProcess
from training.verify import main as verify_main


@pytest.mark.parametrize("limit", [500])
def test_limit_compares_the_subset_with_onnx_on_it(server: ServerProcess, limit: int, capsys) -> None:
    folder = MODELS / "names-gpt"
    assert verify_main([str(folder), "--via", server.base_url, "--limit", str(limit)]) == 0
    line = capsys.readouterr().out.strip()
    assert f"onnx on the first {limit}" in line, line
    diff = float(re.search(r"diff ([0-9.]+)", line).group(1))
    assert diff <= 1e-4, line


def test_limit_needs_via(capsys) -> None:
    assert verify_main([str(MODELS / "names-gpt"), "--limit", "5"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--limit needs --via" in err[0]


def test_help_states_both_tolerances(capsys) -> None:
    assert verify_main(["--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "more than 0.01" in text and "at 0.001" in text and "same N samples" in text
