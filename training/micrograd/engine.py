"""The scalar autograd engine: a Value, its operations with their local derivatives, and backward."""

from __future__ import annotations

import math
from collections.abc import Callable


class Value:
    """A scalar in a computation graph: `data`, `grad` (d output / d self after backward) and its inputs."""

    __slots__ = ("_backward", "_op", "_prev", "data", "grad", "label")

    def __init__(self, data: float, _children: tuple[Value, ...] = (), _op: str = "", label: str = ""):
        self.data = float(data)
        self.grad = 0.0
        self._backward: Callable[[], None] = lambda: None
        self._prev = _children
        self._op = _op
        self.label = label

    def __repr__(self) -> str:
        return f"Value(data={self.data:.6g}, grad={self.grad:.6g})"

    # ---- operations: each sets out._backward to add its local gradient times out.grad to its inputs ----

    def __add__(self, other: Value | float) -> Value:
        other = other if isinstance(other, Value) else Value(other)
        out = Value(self.data + other.data, (self, other), "+")

        def _backward() -> None:
            self.grad += out.grad
            other.grad += out.grad

        out._backward = _backward
        return out

    def __mul__(self, other: Value | float) -> Value:
        other = other if isinstance(other, Value) else Value(other)
        out = Value(self.data * other.data, (self, other), "*")

        def _backward() -> None:
            self.grad += other.data * out.grad
            other.grad += self.data * out.grad

        out._backward = _backward
        return out

    def __pow__(self, k: float) -> Value:
        if not isinstance(k, int | float):
            raise TypeError("Value ** k: k must be an int or float constant")
        out = Value(self.data**k, (self,), f"**{k}")

        def _backward() -> None:
            self.grad += k * self.data ** (k - 1) * out.grad

        out._backward = _backward
        return out

    def tanh(self) -> Value:
        t = math.tanh(self.data)
        out = Value(t, (self,), "tanh")

        def _backward() -> None:
            self.grad += (1 - t * t) * out.grad

        out._backward = _backward
        return out

    def relu(self) -> Value:
        out = Value(self.data if self.data > 0 else 0.0, (self,), "relu")

        def _backward() -> None:
            self.grad += (self.data > 0) * out.grad

        out._backward = _backward
        return out

    def exp(self) -> Value:
        e = math.exp(self.data)
        out = Value(e, (self,), "exp")

        def _backward() -> None:
            self.grad += e * out.grad

        out._backward = _backward
        return out

    def log(self) -> Value:
        if self.data <= 0:
            raise ValueError(f"log of {self.data}: defined for positive values only")
        out = Value(math.log(self.data), (self,), "log")

        def _backward() -> None:
            self.grad += out.grad / self.data

        out._backward = _backward
        return out

    @staticmethod
    def linear(ws: list[Value], xs: list[Value | float], b: Value) -> Value:
        """b + sum(w_i * x_i) as one node. The lecture's Neuron spells it as 2n scalar nodes; the gradients
        are the same (d/dw_i = x_i, d/dx_i = w_i, d/db = 1; tests/training/test_micrograd.py checks them against
        torch), but one node instead of 2n makes the lecture-sized two-moons demo about 10x faster."""
        xd = [x.data if isinstance(x, Value) else float(x) for x in xs]
        total = b.data + sum(w.data * x for w, x in zip(ws, xd, strict=True))
        inputs = [x for x in xs if isinstance(x, Value)]
        out = Value(total, (b, *ws, *inputs), "linear")

        def _backward() -> None:
            g = out.grad
            b.grad += g
            for w, x, xv in zip(ws, xs, xd, strict=True):
                w.grad += xv * g
                if isinstance(x, Value):
                    x.grad += w.data * g

        out._backward = _backward
        return out

    # ---- derived operations: compositions of the ones above, so they need no backward of their own ----

    def __neg__(self) -> Value:
        return self * -1

    def __sub__(self, other: Value | float) -> Value:
        return self + (-other)

    def __truediv__(self, other: Value | float) -> Value:
        return self * (other if isinstance(other, Value) else Value(other)) ** -1

    def __radd__(self, other: float) -> Value:
        return self + other

    def __rsub__(self, other: float) -> Value:
        return Value(other) - self

    def __rmul__(self, other: float) -> Value:
        return self * other

    def __rtruediv__(self, other: float) -> Value:
        return Value(other) / self

    def sigmoid(self) -> Value:
        return 1 / (1 + (-self).exp())

    # ---- backpropagation ----

    def backward(self) -> None:
        """d self / d v for every v in the graph: seed 1 here, then each node's rule in reverse topological
        order (a node runs after every node that uses it, so its grad is complete when it propagates)."""
        order: list[Value] = []
        seen: set[int] = set()
        stack: list[tuple[Value, bool]] = [(self, False)]
        while stack:  # iterative depth-first post-order: deep graphs must not hit the recursion limit
            node, expanded = stack.pop()
            if expanded:
                order.append(node)
            elif id(node) not in seen:
                seen.add(id(node))
                stack.append((node, True))
                stack.extend((child, False) for child in node._prev if id(child) not in seen)
        for node in order:
            node.grad = 0.0
        self.grad = 1.0
        for node in reversed(order):
            node._backward()
