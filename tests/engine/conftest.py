"""The engine tests' shared fixtures: tiny models of every family, exported once per session, and a
generator over each."""

from pathlib import Path

import pytest
import torch

from contract import ModelEntry
from engine import Generator
from tests.support.engine_fixtures import build_fixtures


@pytest.fixture(scope="session")
def fixtures(tmp_path_factory) -> dict[str, tuple[ModelEntry, torch.nn.Module, Path]]:
    """name -> (repository entry of the exported model, eager net, checkpoint folder)."""
    return build_fixtures(tmp_path_factory)


@pytest.fixture(scope="session")
def gens(fixtures) -> dict[str, Generator]:
    """Three slots: the tests' batches of 4-6 sequences join and leave a running engine as slots free."""
    return {name: Generator.load(entry, slots=3) for name, (entry, _, _) in fixtures.items()}
