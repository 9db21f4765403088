"""micrograd: the scalar engine's gradients equal PyTorch's on random expression graphs, and a tiny MLP
built from Values fits the two-moons data; `python -m training micrograd` draws its decision boundary."""

from __future__ import annotations

import math
import random
import subprocess
import sys
from pathlib import Path

import pytest

from training.micrograd import MLP, Value
from training.micrograd.demo import fit, make_moons

torch = pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parents[2]
UNARY = ("tanh", "relu", "exp", "log", "pow", "neg")
BINARY = ("add", "mul", "sub", "div")


def random_graph(rng: random.Random, n_inputs: int, n_ops: int):
    """A random program over inputs, as a function usable with both Values and torch tensors."""
    program = []
    for _ in range(n_ops):
        kind = rng.choice(UNARY + BINARY)
        program.append((kind, rng.randrange(n_inputs + len(program)), rng.randrange(n_inputs + len(program)),
                        rng.choice([2, 3, -1, 0.5])))  # fmt: skip

    def run(inputs: list, exp, log, tanh, relu):
        nodes = list(inputs)
        for kind, i, j, k in program:
            a, b = nodes[i], nodes[j]
            if kind == "tanh":
                out = tanh(a)
            elif kind == "relu":
                out = relu(a)
            elif kind == "exp":
                out = exp(tanh(a))  # bounded: exp of a tanh
            elif kind == "log":
                out = log(exp(tanh(a)) + 1.0)  # positive argument
            elif kind == "pow":
                out = (tanh(a) + 2.0) ** k  # positive base for fractional and negative powers
            elif kind == "neg":
                out = -a
            elif kind == "add":
                out = a + b
            elif kind == "mul":
                out = tanh(a) * tanh(b)
            elif kind == "sub":
                out = a - b
            else:
                out = a / (tanh(b) + 2.0)
            nodes.append(out)
        return sum(nodes[n_inputs:], nodes[0] * 0.0)  # every intermediate contributes (shared subgraphs)

    return run


@pytest.mark.parametrize("seed", range(20))
def test_gradients_match_pytorch(seed: int) -> None:
    rng = random.Random(seed)
    n_inputs = rng.randint(1, 4)
    graph = random_graph(rng, n_inputs, rng.randint(3, 25))
    values = [rng.uniform(-2, 2) for _ in range(n_inputs)]

    xs = [Value(v) for v in values]
    out = graph(xs, Value.exp, Value.log, Value.tanh, Value.relu)
    out.backward()

    ts = [torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in values]
    ref = graph(ts, torch.exp, torch.log, torch.tanh, torch.relu)
    ref.backward()

    assert out.data == pytest.approx(ref.item(), abs=1e-6)
    for x, t in zip(xs, ts, strict=True):
        expected = 0.0 if t.grad is None else t.grad.item()
        assert abs(x.grad - expected) < 1e-6, (x.grad, expected)


def test_backward_twice_gives_the_same_gradients() -> None:
    """backward() resets the graph's grads first: a second call does not double them."""
    a, b = Value(1.5), Value(-0.5)
    c = (a * b + a.exp()).tanh() * a
    c.backward()
    first = (a.grad, b.grad)
    c.backward()
    assert (a.grad, b.grad) == first
    assert a.grad != 0 and math.isfinite(a.grad)


def test_mlp_fits_two_moons() -> None:
    xs, ys = make_moons(20, noise=0.05, seed=3)
    model = MLP(2, [8, 8, 1], act="relu", seed=1)
    history = fit(model, xs, ys, steps=30, log=lambda *_: None)
    assert history[-1]["accuracy"] >= 0.95
    assert history[-1]["loss"] < 0.5 * history[0]["loss"]


def test_micrograd_command_draws_the_boundary(tmp_path: Path) -> None:
    out = tmp_path / "mg"
    proc = subprocess.run(
        [sys.executable, "-m", "training", "micrograd", "--steps", "3", "--samples", "8", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "decision boundary" in proc.stdout
    assert (out / "boundary.png").stat().st_size > 1000
