"""micrograd's `draw_dot` (the lecture's graph picture, as DOT text; an SVG when Graphviz is installed) and
`Value.linear`, the one-node weighted sum that makes the lecture-sized demo fast: same values and
gradients as the lecture's 2n scalar nodes."""

from __future__ import annotations

import random
import re
import shutil
from pathlib import Path

import pytest

from training.micrograd import Value, draw_dot
from training.micrograd.draw import neuron_example, render, trace


def test_the_lectures_neuron_drawn_with_its_gradients() -> None:
    dot = draw_dot(neuron_example())
    records = dict(re.findall(r'label="\{ (\S[^|]*?) \| data [^|]+\| grad (-?[0-9.]+) \}"', dot))
    # the lecture's numbers: o = tanh(n) = 0.7071, do/dn = 0.5, and back to the inputs
    assert records == {
        "o": "1.0000", "n": "0.5000", "b": "0.5000", "x1*w1 + x2*w2": "0.5000", "x1*w1": "0.5000",
        "x2*w2": "0.5000", "x1": "-1.5000", "w1": "1.0000", "x2": "0.5000", "w2": "0.0000",
    }  # fmt: skip
    assert dot.startswith("digraph micrograd {") and dot.count("->") == 9 + 5  # 9 inputs to ops, 5 op outputs
    assert 'label="tanh"' in dot and dot.count('label="*"') == 2 and dot.count('label="+"') == 2


def test_render_draws_a_picture_when_graphviz_is_installed(tmp_path: Path) -> None:
    picture = render(draw_dot(neuron_example()), tmp_path / "graph.svg")
    if shutil.which("dot") is None:
        assert picture is None
        pytest.skip("Graphviz's dot is not installed: DOT text only")
    assert picture is not None and "<svg" in picture.read_text()


def test_linear_is_the_sum_of_products() -> None:
    rng = random.Random(0)
    ws = [Value(rng.uniform(-1, 1)) for _ in range(5)]
    xs = [Value(rng.uniform(-1, 1)) for _ in range(4)] + [0.3]  # a plain float input too
    b = Value(0.2)
    fused = Value.linear(ws, xs, b).tanh()
    fused.backward()
    got = [v.grad for v in [*ws, *xs[:4], b]]
    for v in [*ws, *xs[:4], b]:
        v.grad = 0.0
    spelled = sum((w * x for w, x in zip(ws, xs, strict=True)), b).tanh()
    spelled.backward()
    assert fused.data == pytest.approx(spelled.data, abs=1e-12)
    assert got == pytest.approx([v.grad for v in [*ws, *xs[:4], b]], abs=1e-12)
    assert len(trace(fused)[0]) == 12  # tanh, linear, 5 w, 4 x, b: one node for the sum, not 10
