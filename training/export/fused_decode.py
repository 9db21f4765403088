"""The GPT decode graph: the step graph (fused.py) specialised to one new token per row.

Why a second graph: a decode step is most of serving, and at one new token per row the general graph's
glue is pure cost. Here the activations are 2-D [batch, n_embd], so the q/k/v projection and its bias
fuse into one Gemm and no Transpose is needed (with one token, [B, H, 1, D], [B, H, D, 1] and [B, C]
are one layout, so heads are Reshapes); the new token's own score is an elementwise product summed
over head_dim, and its share of the output a broadcast Mul, instead of the one-element MatMuls that
cost most at large batch; the softmax's two parts come apart in one Split; and the new-token mask
(a Trilu over new x new) is gone. Same inputs and outputs as the step graph (contract v2, with
new == 1); the engine runs it for decode steps and the step graph for everything else
(engine/backends.py), and export checks both against the eager net (training/export/parity.py).

Its weights are not stored twice: `share_weights` turns every initializer it has in common with the
step graph into ONNX external data pointing at that tensor's bytes inside model.onnx (the decode file is
~35 KB of nodes, and any ONNX tool that loads it from its folder reads the step graph's bytes).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto

from contract import IDX, LOGITS, POS, new_kv_names, past_names
from training.export.fused import Builder, mlp, qkv_weights, skip_ln, step_io


def fused_decode_model(weights: dict[str, np.ndarray], n_layer: int, n_head: int, block_size: int) -> onnx.ModelProto:
    """The decode graph of a GPT with these weights: idx [B, 1], pos, *past -> logits, *new_kv."""
    b = Builder(weights)
    vocab, n_embd = weights["lm_head.weight"].shape
    _embed(b, block_size)
    _mask(b)
    x, h, h_bias = "pos_emb", "tok_emb", b.const("zeros", np.zeros(n_embd, np.float32))
    for i in range(n_layer):
        x = skip_ln(b, h, x, h_bias, f"blocks.{i}.ln_1", f"ln1_{i}", f"x1_{i}")  # layer 0: wte + wpe
        x, h, h_bias = mlp(b, i, _attention(b, i, f"ln1_{i}", n_head, n_embd), x)
    skip_ln(b, h, x, h_bias, "ln_f", "ln_f")
    b.node("Reshape", ["ln_f", b.const("logits_shape", np.array([0, 1, n_embd], np.int64))], ["ln_f3"])
    b.node("MatMul", ["ln_f3", b.weight("lm_head.wT", weights["lm_head.weight"].T)], [LOGITS])
    return step_io(b, "charlm-gpt-decode", n_layer, n_head, vocab, n_embd)


def _embed(b: Builder, block_size: int) -> None:
    """tok_emb = wte[idx[:, 0]], pos_emb = wpe[min(pos, block_size - 1)], both [B, n_embd]; summed by
    the first layer's SkipLayerNormalization."""
    b.node("Squeeze", [IDX, b.const("ax1", np.array([1], np.int64))], ["tokens"])
    b.node("Min", [POS, b.const("last_pos", np.array(block_size - 1, np.int64))], ["positions"])
    b.node("Gather", [b.weight("wte", b.weights["lm_head.weight"]), "tokens"], ["tok_emb"])
    b.node("Gather", [b.weight("wpe", b.weights["wpe.weight"]), "positions"], ["pos_emb"])


def _mask(b: Builder) -> None:
    """past_mask [B, 1, 1, past]: column j hidden (-inf) iff j >= pos[b]; and the sizes [past, 1] that
    split the softmax back into its cache and new-token parts. Once for all layers."""
    b.node("Shape", [past_names(1)[1]], ["pv_shape"])
    b.node("Gather", ["pv_shape", b.const("i2", np.array(2, np.int64))], ["past_len"])
    b.node("Range", [b.const("i0", np.array(0, np.int64)), "past_len", b.const("i1", np.array(1, np.int64))], ["cols"])
    b.node("Reshape", [POS, b.const("pos_shape", np.array([-1, 1, 1, 1], np.int64))], ["pos4"])
    b.node("GreaterOrEqual", ["cols", "pos4"], ["hidden"])
    ninf, zero = b.const("ninf", np.array(-np.inf, np.float32)), b.const("zero", np.array(0.0, np.float32))
    b.node("Where", ["hidden", ninf, zero], ["past_mask"])
    b.node("Unsqueeze", ["past_len", b.const("ax0", np.array([0], np.int64))], ["past_len_1"])
    b.node("Concat", ["past_len_1", b.const("one_1", np.array([1], np.int64))], ["parts"], axis=0)


def _attention(b: Builder, i: int, x: str, n_head: int, n_embd: int) -> str:
    """Layer i's attention for one new token per row; writes new_key_i [B, H, D, 1] and new_value_i
    [B, H, 1, D], returns the output projection's product (its bias goes to the next SkipLayerNorm)."""
    w, p = b.weights, f"blocks.{i}.attn."
    d = n_embd // n_head
    wqkv, bqkv = qkv_weights(b, i, n_head)
    qkv = b.node("Add", [b.node("MatMul", [x, wqkv], [f"qkv0_{i}"]), bqkv], [f"qkv_{i}"])  # ORT: one Gemm
    qkv = b.node("Reshape", [qkv, b.const(f"qkv_shape_{i}", np.array([0, 3 * n_head, 1, d], np.int64))], [f"qkv4_{i}"])
    q, k, v = f"q_{i}", f"k_{i}", new_kv_names(i + 1)[-1]
    b.node("Split", [qkv], [q, k, v], axis=1, num_outputs=3)  # [B, H, 1, D] each
    b.node("Reshape", [k, b.const(f"key_shape_{i}", np.array([0, n_head, d, 1], np.int64))], [new_kv_names(i + 1)[-2]])
    past_k, past_v = past_names(i + 1)[-2:]
    s_past = b.node("Add", [b.node("MatMul", [q, past_k], [f"s_past0_{i}"]), "past_mask"], [f"s_past_{i}"])
    qk = b.node("Mul", [q, k], [f"qk_{i}"])
    s_new = b.node("ReduceSum", [qk, b.const(f"last_{i}", np.array([-1], np.int64))], [f"s_new_{i}"], keepdims=1)
    prob = b.node("Softmax", [b.node("Concat", [s_past, s_new], [f"s_{i}"], axis=-1)], [f"p_{i}"], axis=-1)
    b.node("Split", [prob, "parts"], [f"p_past_{i}", f"p_new_{i}"], axis=-1)
    y_past = b.node("MatMul", [f"p_past_{i}", past_v], [f"y_past_{i}"])
    y = b.node("Add", [y_past, b.node("Mul", [f"p_new_{i}", v], [f"y_new_{i}"])], [f"y_{i}"])
    y = b.node("Reshape", [y, b.const(f"y_shape_{i}", np.array([0, n_embd], np.int64))], [f"y2_{i}"])
    return b.node("MatMul", [y, b.weight(p + "wo", w[p + "c_proj.weight"].T)], [f"attn_{i}"])


SHARED_MIN_BYTES = 1024  # smaller constants stay inline: sharing them saves nothing worth a lookup


def share_weights(decode: onnx.ModelProto, step_file: Path) -> int:
    """Point decode's initializers at the identical bytes of the same-named ones in the saved step graph
    `step_file` (ONNX external data: location, offset, length, relative to the decode file's folder,
    which must be step_file's). Returns how many were shared; the others stay inline."""
    blob = step_file.read_bytes()
    step = {t.name: t.raw_data for t in onnx.load_model_from_string(blob).graph.initializer}
    shared = 0
    for t in decode.graph.initializer:
        raw = t.raw_data
        offset = blob.find(raw) if len(raw) >= SHARED_MIN_BYTES and step.get(t.name) == raw else -1
        if offset < 0:
            continue
        t.ClearField("raw_data")
        t.data_location = TensorProto.EXTERNAL
        for key, value in (("location", step_file.name), ("offset", str(offset)), ("length", str(len(raw)))):
            entry = t.external_data.add()
            entry.key, entry.value = key, value
        shared += 1
    return shared
