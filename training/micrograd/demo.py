"""`python -m training micrograd`: the lecture's demo. A 2-16-16-1 ReLU MLP of Values learns the two-moons
dataset with the max-margin (hinge) loss and L2, by plain SGD; boundary.png shows its decision boundary.
The defaults are the lecture's 100 points x 100 steps: every step builds and backpropagates a graph of
scalar Values in pure Python (each neuron's weighted sum one `Value.linear` node, which made a step ~10x
cheaper than 2n scalar nodes). It also writes graph.dot, the lecture's neuron `o = tanh(x1*w1 + x2*w2 + b)`
drawn by `draw_dot`, and graph.svg when Graphviz's `dot` is installed.
"""

from __future__ import annotations

import argparse
import json
import math
import random
from pathlib import Path

from training.micrograd.draw import draw_dot, neuron_example, render
from training.micrograd.engine import Value
from training.micrograd.nn import MLP

ALPHA = 1e-4  # L2 strength (the lecture's)


def make_moons(n: int, noise: float = 0.1, seed: int = 0) -> tuple[list[tuple[float, float]], list[int]]:
    """Two interleaved half circles (scikit-learn's make_moons, without scikit-learn); labels -1 / +1."""
    rng = random.Random(seed)
    xs, ys = [], []
    for i in range(n):
        t = math.pi * rng.random()
        if i % 2 == 0:
            x, y, label = math.cos(t), math.sin(t), -1
        else:
            x, y, label = 1 - math.cos(t), 0.5 - math.sin(t), 1
        xs.append((x + rng.gauss(0, noise), y + rng.gauss(0, noise)))
        ys.append(label)
    return xs, ys


def loss_and_accuracy(model: MLP, xs: list[tuple[float, float]], ys: list[int]) -> tuple[Value, float]:
    """Mean hinge loss relu(1 - y * score) plus ALPHA * sum(p^2); accuracy of sign(score)."""
    scores = [model(list(x)) for x in xs]
    losses = [(1 + -y * s).relu() for y, s in zip(ys, scores, strict=True)]
    data_loss = sum(losses, Value(0.0)) * (1.0 / len(losses))
    reg = ALPHA * sum((p * p for p in model.parameters()), Value(0.0))
    accuracy = sum((s.data > 0) == (y > 0) for y, s in zip(ys, scores, strict=True)) / len(ys)
    return data_loss + reg, accuracy


def fit(model: MLP, xs, ys, steps: int, log=print) -> list[dict[str, float]]:
    """SGD with the learning rate decaying linearly from 1.0 to 0.1 (the lecture's schedule)."""
    history = []
    for k in range(steps):
        loss, acc = loss_and_accuracy(model, xs, ys)
        model.zero_grad()
        loss.backward()
        lr = 1.0 - 0.9 * k / steps
        for p in model.parameters():
            p.data -= lr * p.grad
        history.append({"step": k, "loss": loss.data, "accuracy": acc})
        if k % 10 == 0 or k == steps - 1:
            log(f"step {k}: loss {loss.data:.4f}, accuracy {acc:.0%}")
    return history


def plot_boundary(model: MLP, xs, ys, path: Path, grid: int = 40) -> None:
    """The sign of the score over a grid around the data, and the points coloured by label."""
    from matplotlib.figure import Figure

    lo_x, hi_x = min(x for x, _ in xs) - 0.5, max(x for x, _ in xs) + 0.5
    lo_y, hi_y = min(y for _, y in xs) - 0.5, max(y for _, y in xs) + 0.5
    gx = [lo_x + (hi_x - lo_x) * i / (grid - 1) for i in range(grid)]
    gy = [lo_y + (hi_y - lo_y) * j / (grid - 1) for j in range(grid)]
    z = [[1.0 if model([x, y]).data > 0 else -1.0 for x in gx] for y in gy]
    fig = Figure(figsize=(6, 5), layout="constrained")
    ax = fig.add_subplot()
    ax.contourf(gx, gy, z, levels=[-2, 0, 2], colors=["tab:blue", "tab:red"], alpha=0.25)
    for label, color in ((-1, "tab:blue"), (1, "tab:red")):
        pts = [x for x, y in zip(xs, ys, strict=True) if y == label]
        ax.scatter([p[0] for p in pts], [p[1] for p in pts], c=color, s=18, edgecolors="k", lw=0.4, label=f"{label:+d}")
    ax.set(title="micrograd MLP on two moons: decision boundary", xlabel="x1", ylabel="x2")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1))
    fig.savefig(path, dpi=110)


def micrograd_command(args: argparse.Namespace) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    xs, ys = make_moons(args.samples, seed=args.seed)
    model = MLP(2, [16, 16, 1], act="relu", seed=args.seed)
    print(f"micrograd: MLP 2-16-16-1 ({len(model.parameters())} Values), {args.samples} two-moons points")
    history = fit(model, xs, ys, args.steps)
    plot_boundary(model, xs, ys, out / "boundary.png")
    (out / "history.json").write_text(json.dumps(history) + "\n")
    print(f"decision boundary: {out / 'boundary.png'}; final accuracy {history[-1]['accuracy']:.0%}")
    dot = draw_dot(neuron_example())
    (out / "graph.dot").write_text(dot)
    picture = render(dot, out / "graph.svg")
    drawn = f", {picture}" if picture else " (install Graphviz's dot for graph.svg)"
    print(f"expression graph of the lecture's neuron: {out / 'graph.dot'}{drawn}")
    return 0
