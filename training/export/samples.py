"""Samples for the model card, and its novelty rate, drawn from the eager net of the checkpoint through
the service's engine (training.sample), so the card shows what the server produces from these weights.

Temperature 1, fixed seeds (choice i: derive_seed(1337, i), as a request with n does): reproducible.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from engine import SamplingParams
from training.sample import complete

LINE_MAX_CHARS = 200  # a `lines` sample that has not ended by then is cut (and marked with "…")
STREAM_CHARS = 200
SEED = 1337
NOVELTY_SAMPLES = 2000


def draw_samples(
    net: nn.Module, arch: str, vocab: list[str], boundary_token: int | None, n: int = 10, seed: int = SEED
) -> list[str]:
    """`lines` models: boundary -> ... -> boundary, one item each. `stream`: 200 chars after a newline."""
    limit = LINE_MAX_CHARS if boundary_token is not None else STREAM_CHARS
    params = SamplingParams(temperature=1.0, seed=seed, max_new_tokens=limit)
    done = complete(net, arch, vocab, boundary_token, n, "", params)
    if boundary_token is None:
        return [c.text for c in done]
    return [c.text if c.finish_reason == "stop" else c.text + "…" for c in done]


def novelty_rate(
    net: nn.Module,
    arch: str,
    vocab: list[str],
    boundary_token: int,
    is_novel: Callable[[str], bool],
    n: int = NOVELTY_SAMPLES,
    seed: int = SEED,
) -> float:
    """The share of n samples at temperature 1 that are not in the training data (`is_novel`)."""
    params = SamplingParams(temperature=1.0, seed=seed, max_new_tokens=LINE_MAX_CHARS)
    done = complete(net, arch, vocab, boundary_token, n, "", params)
    return sum(is_novel(c.text) for c in done) / n
