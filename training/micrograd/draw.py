"""`draw_dot`: a Value's expression graph as Graphviz DOT text (lecture 1's picture of the graph).

The text needs nothing installed; `render` turns it into an SVG or PNG with Graphviz's `dot` program
when it is on PATH (`apt install graphviz`), and says so plainly when it is not. One record per Value
(label, data, grad) and one small node per operation, as in the lecture.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from training.micrograd.engine import Value


def trace(root: Value) -> tuple[list[Value], list[tuple[Value, Value]]]:
    """Every Value that `root` depends on, and the (input, output) edges between them."""
    nodes: list[Value] = []
    edges: list[tuple[Value, Value]] = []
    seen: set[int] = set()
    stack = [root]
    while stack:
        v = stack.pop()
        if id(v) in seen:
            continue
        seen.add(id(v))
        nodes.append(v)
        for child in v._prev:
            edges.append((child, v))
            stack.append(child)
    return nodes, edges


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("{", "\\{").replace("}", "\\}").replace("|", "\\|")


def draw_dot(root: Value, rankdir: str = "LR") -> str:
    """DOT text of the graph ending at `root`: a record `label | data | grad` per Value, an op node per
    operation, left to right."""
    nodes, edges = trace(root)
    lines = ["digraph micrograd {", f"  rankdir={rankdir};", '  node [fontname="Helvetica"];']
    for v in nodes:
        uid = f"v{id(v)}"
        label = f"{_escape(v.label)} | " if v.label else ""
        lines.append(f'  {uid} [shape=record, label="{{ {label}data {v.data:.4f} | grad {v.grad:.4f} }}"];')
        if v._op:
            lines.append(f'  {uid}op [label="{_escape(v._op)}"];')
            lines.append(f"  {uid}op -> {uid};")
    for child, parent in edges:
        lines.append(f"  v{id(child)} -> v{id(parent)}op;")
    lines.append("}")
    return "\n".join(lines) + "\n"


def render(dot_text: str, path: Path) -> Path | None:
    """Write `path` (.svg or .png) with Graphviz's `dot`; None when `dot` is not installed."""
    dot = shutil.which("dot")
    if dot is None:
        return None
    fmt = Path(path).suffix.lstrip(".") or "svg"
    subprocess.run([dot, f"-T{fmt}", "-o", str(path)], input=dot_text, text=True, check=True, timeout=60)
    return Path(path)


def neuron_example() -> Value:
    """The lecture's neuron: o = tanh(x1*w1 + x2*w2 + b), with its gradients filled in by backward."""
    x1, x2 = Value(2.0, label="x1"), Value(0.0, label="x2")
    w1, w2 = Value(-3.0, label="w1"), Value(1.0, label="w2")
    b = Value(6.8813735870195432, label="b")
    x1w1 = x1 * w1
    x1w1.label = "x1*w1"
    x2w2 = x2 * w2
    x2w2.label = "x2*w2"
    s = x1w1 + x2w2
    s.label = "x1*w1 + x2*w2"
    n = s + b
    n.label = "n"
    o = n.tanh()
    o.label = "o"
    o.backward()
    return o
