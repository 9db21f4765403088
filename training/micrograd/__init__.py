"""micrograd (Zero to Hero, lecture 1): a scalar autograd engine and a tiny neural-net library on it.

`Value` holds one float and its gradient; every operation records its inputs and a local backward
rule, and `backward()` applies the chain rule in reverse topological order. `Neuron`, `Layer` and
`MLP` are built from Values only. Checked against PyTorch in tests/training/test_micrograd.py.
"""

from training.micrograd.draw import draw_dot
from training.micrograd.engine import Value
from training.micrograd.nn import MLP, Layer, Module, Neuron

__all__ = ["MLP", "Layer", "Module", "Neuron", "Value", "draw_dot"]
