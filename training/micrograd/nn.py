"""A tiny neural-net library on Values: Neuron, Layer, MLP (micrograd's nn.py)."""

from __future__ import annotations

import random

from training.micrograd.engine import Value


class Module:
    def parameters(self) -> list[Value]:
        return []

    def zero_grad(self) -> None:
        for p in self.parameters():
            p.grad = 0.0


class Neuron(Module):
    """act(w . x + b); weights uniform in +-1/sqrt(n_in) so that tanh starts unsaturated."""

    def __init__(self, n_in: int, act: str = "tanh", rng: random.Random | None = None):
        rng = rng or random.Random()
        scale = n_in**-0.5
        self.w = [Value(rng.uniform(-scale, scale)) for _ in range(n_in)]
        self.b = Value(0.0)
        self.act = act

    def __call__(self, x: list[Value | float]) -> Value:
        z = Value.linear(self.w, x, self.b)  # = sum((wi * xi for wi, xi in zip(self.w, x)), self.b), one node
        if self.act == "tanh":
            return z.tanh()
        if self.act == "relu":
            return z.relu()
        return z

    def parameters(self) -> list[Value]:
        return [*self.w, self.b]

    def __repr__(self) -> str:
        return f"{self.act or 'linear'} Neuron({len(self.w)})"


class Layer(Module):
    def __init__(self, n_in: int, n_out: int, act: str = "tanh", rng: random.Random | None = None):
        self.neurons = [Neuron(n_in, act, rng) for _ in range(n_out)]

    def __call__(self, x: list[Value | float]) -> list[Value]:
        return [n(x) for n in self.neurons]

    def parameters(self) -> list[Value]:
        return [p for n in self.neurons for p in n.parameters()]


class MLP(Module):
    """Layers of `act` neurons and a linear output layer."""

    def __init__(self, n_in: int, sizes: list[int], act: str = "tanh", seed: int | None = None):
        rng = random.Random(seed)
        dims = [n_in, *sizes]
        self.layers = [Layer(dims[i], dims[i + 1], act if i < len(sizes) - 1 else "", rng) for i in range(len(sizes))]

    def __call__(self, x: list[Value | float]) -> list[Value] | Value:
        out: list = list(x)
        for layer in self.layers:
            out = layer(out)
        return out[0] if len(out) == 1 else out

    def parameters(self) -> list[Value]:
        return [p for layer in self.layers for p in layer.parameters()]
