"""The GPT step graph (contract v2) written node by node with ONNX Runtime's fused CPU kernels.

Why not the tracer's graph: at small batch a step's cost is per node, and the traced graph is mostly glue
around tiny tensors (264 nodes for 6 layers: every bias an Add, GELU as Div/Erf/Add/Mul/Mul, every
residual an Add beside its LayerNorm). Written directly, a layer is a few kernels: `BiasGelu` (bias +
exact erf GELU), the attention scale folded into the query weights, the contract's attention (cache
scores and new-token scores apart, one softmax) with no Where/Expand/Shape chains, and each residual as
Add, Add, `LayerNormalization`. Not `SkipLayerNormalization`, which does the same in one node: ONNX
Runtime's CPU kernel for it is a scalar loop per row, so beyond a few rows it costs several times
LayerNormalization's vectorized kernel (docs/benchmarks.md, "LayerNormalization instead of
SkipLayerNormalization"); ONNX Runtime does not fuse the three back, as the sum also feeds the next
residual. Same inputs, outputs and masking rule as the traced graph; export checks it against the eager
net like any other (training/export/parity.py).

numpy and onnx only: the weights come in as arrays named as in GPT.state_dict().
"""

from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from contract import IDX, LOGITS, POS, new_kv_names, past_names

MS = "com.microsoft"
EPS = 1e-5  # torch.nn.LayerNorm's default, as GPT uses


class Builder:
    def __init__(self, weights: dict[str, np.ndarray]):
        self.weights, self.nodes, self.inits = weights, [], []

    def const(self, name: str, value: np.ndarray | float | int | list[int]) -> str:
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def weight(self, name: str, value: np.ndarray) -> str:
        return self.const(name, np.ascontiguousarray(value, dtype=np.float32))

    def bias(self, key: str, size: int) -> np.ndarray:
        """A bias of the net, zeros when it was built with bias=False (the fused kernels want one)."""
        return self.weights.get(key, np.zeros(size, np.float32))

    def node(self, op: str, inputs: list[str], outputs: list[str], domain: str = "", **attrs) -> str:
        self.nodes.append(helper.make_node(op, inputs, outputs, domain=domain, **attrs))
        return outputs[0]


def fused_step_model(weights: dict[str, np.ndarray], n_layer: int, n_head: int, block_size: int) -> onnx.ModelProto:
    """The step graph of a GPT with these weights: idx, pos, *past -> logits, *new_kv (contract v2). One
    function, written as the graph reads from input to output, like GPT.step it must match node for node."""
    b = Builder(weights)
    vocab, n_embd = weights["lm_head.weight"].shape
    _embed(b, block_size)
    _masks(b)
    x, h, h_bias = "x0", None, None
    for i in range(n_layer):
        ln1 = f"ln1_{i}"
        if h is None:
            b.node("LayerNormalization", [x, *_ln_weights(b, f"blocks.{i}.ln_1")], [ln1], axis=-1, epsilon=EPS)
        else:  # the previous MLP's output + its bias + the residual, then this layer's ln_1
            x = skip_ln(b, h, x, h_bias, f"blocks.{i}.ln_1", ln1, f"x1_{i}")
        x, h, h_bias = mlp(b, i, _attention(b, i, ln1, n_head, n_embd), x)
    skip_ln(b, h, x, h_bias, "ln_f", "ln_f")
    b.node("MatMul", ["ln_f", b.weight("lm_head.wT", weights["lm_head.weight"].T)], [LOGITS])
    return step_io(b, "charlm-gpt-step", n_layer, n_head, vocab, n_embd)


def step_io(b: Builder, name: str, n_layer: int, n_head: int, vocab: int, n_embd: int) -> onnx.ModelProto:
    """The model around b's nodes, with contract v2's inputs and outputs."""
    d = n_embd // n_head

    def kv(names: list[str], length: str) -> list[onnx.ValueInfoProto]:
        shapes = (["batch", n_head, d, length], ["batch", n_head, length, d])  # keys, values
        return [helper.make_tensor_value_info(n, TensorProto.FLOAT, shapes[j % 2]) for j, n in enumerate(names)]

    graph = helper.make_graph(
        b.nodes,
        name,
        [
            helper.make_tensor_value_info(IDX, TensorProto.INT64, ["batch", "new"]),
            helper.make_tensor_value_info(POS, TensorProto.INT64, ["batch"]),
            *kv(past_names(n_layer), "past"),
        ],
        [
            helper.make_tensor_value_info(LOGITS, TensorProto.FLOAT, ["batch", "new", vocab]),
            *kv(new_kv_names(n_layer), "new"),
        ],
        b.inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid(MS, 1)])
    model.ir_version = 9
    return model


def _ln_weights(b: Builder, prefix: str) -> list[str]:
    n_embd = b.weights[prefix + ".weight"].shape[0]
    return [
        b.weight(prefix + ".g", b.weights[prefix + ".weight"]),
        b.weight(prefix + ".b", b.bias(prefix + ".bias", n_embd)),
    ]


def skip_ln(b: Builder, h: str, x: str, h_bias: str | None, prefix: str, out: str, total: str = "") -> str:
    """LayerNorm(h + h_bias + x) -> out, and the sum itself -> total (the next residual; named after
    `out` when the caller has no use for it). No h_bias: h + x."""
    total = total or f"{out}_sum"
    if h_bias is not None:
        h = b.node("Add", [h, h_bias], [f"{total}_h"])
    b.node("Add", [h, x], [total])
    b.node("LayerNormalization", [total, *_ln_weights(b, prefix)], [out], axis=-1, epsilon=EPS)
    return total


def mlp(b: Builder, i: int, a: str, x: str) -> tuple[str, str, str]:
    """Layer i after its attention output `a` (bias not added) and residual x: ln_2, then the MLP. Returns
    the new residual, the MLP's output and its bias (both added by the next skip_ln)."""
    w, p = b.weights, f"blocks.{i}."
    n_embd = w[p + "ln_2.weight"].shape[0]
    a_bias = b.weight(f"{p}attn.bo", b.bias(p + "attn.c_proj.bias", n_embd))
    x = skip_ln(b, a, x, a_bias, p + "ln_2", f"ln2_{i}", f"x2_{i}")
    fc = b.node("MatMul", [f"ln2_{i}", b.weight(f"{p}mlp.wfc", w[p + "mlp.c_fc.weight"].T)], [f"fc_{i}"])
    gelu = b.node("BiasGelu", [fc, b.weight(f"{p}mlp.bfc", b.bias(p + "mlp.c_fc.bias", 4 * n_embd))], [f"gelu_{i}"], MS)
    h = b.node("MatMul", [gelu, b.weight(f"{p}mlp.wproj", w[p + "mlp.c_proj.weight"].T)], [f"h_{i}"])
    return x, h, b.weight(f"{p}mlp.bproj", b.bias(p + "mlp.c_proj.bias", n_embd))


def qkv_weights(b: Builder, i: int, n_head: int) -> tuple[str, str]:
    """Layer i's fused q/k/v projection, the 1/sqrt(head_dim) scale folded into the query's columns."""
    w, p = b.weights, f"blocks.{i}.attn."
    n_embd = w[p + "c_proj.weight"].shape[0]
    scale = np.ones(3 * n_embd, np.float32)
    scale[:n_embd] = 1.0 / math.sqrt(n_embd // n_head)
    wqkv = w[p + "c_attn.weight"].T * scale[None, :]
    bqkv = b.bias(p + "c_attn.bias", 3 * n_embd) * scale
    return b.weight(p + "wqkv", wqkv), b.weight(p + "bqkv", bqkv)


def _embed(b: Builder, block_size: int) -> None:
    """x0 = wte[idx] + wpe[min(pos + arange(new), block_size - 1)] (padding past the table is clamped)."""
    w = b.weights
    b.const("i0", np.array(0, np.int64))
    b.const("i1", np.array(1, np.int64))
    b.const("ax1", np.array([1], np.int64))
    b.const("ax-1", np.array([-1], np.int64))
    b.node("Shape", [IDX], ["idx_shape"])
    b.node("Gather", ["idx_shape", "i1"], ["new"])
    b.node("Range", ["i0", "new", "i1"], ["new_range"])
    b.node("Unsqueeze", [POS, "ax1"], ["pos_col"])
    b.node("Add", ["pos_col", "new_range"], ["positions"])
    b.node("Min", ["positions", b.const("last_pos", np.array(block_size - 1, np.int64))], ["positions_c"])
    b.node("Gather", [b.weight("wte", w["lm_head.weight"]), IDX], ["tok_emb"])
    b.node("Gather", [b.weight("wpe", w["wpe.weight"]), "positions_c"], ["pos_emb"])
    b.node("Add", ["tok_emb", "pos_emb"], ["x0"])


def _masks(b: Builder) -> None:
    """Additive masks, once for all layers: past [B, 1, 1, past] (column j hidden iff j >= pos[b]) and
    new [new, new] (new token j hidden from i iff j > i)."""
    b.node("Shape", [past_names(1)[1]], ["pv_shape"])
    b.node("Gather", ["pv_shape", b.const("i2", np.array(2, np.int64))], ["past_len"])
    b.node("Range", ["i0", "past_len", "i1"], ["past_range"])
    b.node("GreaterOrEqual", ["past_range", "pos_col"], ["hidden"])  # [B, past]
    b.const("zero_f", np.array(0.0, np.float32))
    b.const("ninf", np.array(-np.inf, np.float32))
    b.node("Where", ["hidden", "ninf", "zero_f"], ["past_mask2"])
    b.node("Unsqueeze", ["past_mask2", b.const("ax12", np.array([1, 2], np.int64))], ["past_mask"])
    b.node("Unsqueeze", ["new", b.const("ax0", np.array([0], np.int64))], ["new_1"])
    b.node("Unsqueeze", ["past_len", "ax0"], ["past_len_1"])  # Slice bounds of the softmax's two parts
    b.const("i0_1", np.array([0], np.int64))
    b.const("big_1", np.array([np.iinfo(np.int64).max], np.int64))
    b.node("Concat", ["new_1", "new_1"], ["new_sq"], axis=0)
    b.node("ConstantOfShape", ["new_sq"], ["ninf_sq"], value=numpy_helper.from_array(np.array([-np.inf], np.float32)))
    b.node("Trilu", ["ninf_sq", "i1"], ["new_mask"], upper=1)


def _attention(b: Builder, i: int, x: str, n_head: int, n_embd: int) -> str:
    """Contract v2 attention of layer i; outputs new_key_i [B, H, D, new] and new_value_i [B, H, new, D].
    The 1/sqrt(head_dim) scale is folded into the query's weights and bias."""
    w, p = b.weights, f"blocks.{i}.attn."
    d = n_embd // n_head
    wqkv, bqkv = qkv_weights(b, i, n_head)
    qkv = b.node("MatMul", [x, wqkv], [f"qkv0_{i}"])
    qkv = b.node("Add", [qkv, bqkv], [f"qkv_{i}"])
    shape = b.const(f"qkv_shape_{i}", np.array([0, 0, 3 * n_head, d], np.int64))
    qkv = b.node("Reshape", [qkv, shape], [f"qkv4_{i}"])
    qkv = b.node("Transpose", [qkv], [f"qkvT_{i}"], perm=[0, 2, 1, 3])  # [B, 3H, new, D]
    q, k, v = f"q_{i}", f"k_{i}", new_kv_names(i + 1)[-1]
    b.node("Split", [qkv], [q, k, v], axis=1, num_outputs=3)
    kt = b.node("Transpose", [k], [new_kv_names(i + 1)[-2]], perm=[0, 1, 3, 2])
    past_k, past_v = past_names(i + 1)[-2:]
    s_past = b.node("MatMul", [q, past_k], [f"s_past0_{i}"])
    s_past = b.node("Add", [s_past, "past_mask"], [f"s_past_{i}"])
    s_new = b.node("MatMul", [q, kt], [f"s_new0_{i}"])
    s_new = b.node("Add", [s_new, "new_mask"], [f"s_new_{i}"])
    s = b.node("Concat", [s_past, s_new], [f"s_{i}"], axis=-1)
    prob = b.node("Softmax", [s], [f"p_{i}"], axis=-1)  # the diagonal keeps every row finite
    p_past = b.node("Slice", [prob, "i0_1", "past_len_1", "ax-1"], [f"p_past_{i}"])
    p_new = b.node("Slice", [prob, "past_len_1", "big_1", "ax-1"], [f"p_new_{i}"])
    y = b.node(
        "Add",
        [b.node("MatMul", [p_past, past_v], [f"y_past_{i}"]), b.node("MatMul", [p_new, v], [f"y_new_{i}"])],
        [f"y_{i}"],
    )
    y = b.node("Transpose", [y], [f"yT_{i}"], perm=[0, 2, 1, 3])
    y = b.node("Reshape", [y, b.const(f"y_shape_{i}", np.array([0, 0, n_embd], np.int64))], [f"y3_{i}"])
    return b.node("MatMul", [y, b.weight(p + "wo", w[p + "c_proj.weight"].T)], [f"attn_{i}"])
