"""The GPT decode graph: one new token per row over a cache it updates in place (contract/graph.py).

Why a second graph: a decode step is most of serving, and at one new token per row the step graph's
attention is glue around tiny tensors that reads every row's cache up to the longest row. Here each
layer's attention is ONNX Runtime's fused `GroupQueryAttention` (kv heads = heads, so plain multi-head
attention) over a cache laid out [batch, heads, columns, head_dim]: it takes the packed q/k/v of the
fused Gemm, reads each row only up to its own position (`seqlens_k` = pos), and, with its past and
present bound to the same buffer, writes the row's new key and value at column pos[b] itself, so the
engine copies nothing after the call. Activations stay 2-D [batch, n_embd] (the q/k/v MatMul and bias
fuse into one Gemm); the kernel sees them as [batch, 1, 3 * n_embd]. The 1/sqrt(head_dim) scale is in
the query's weights (fused.qkv_weights), so the kernel's own scale is 1. The engine runs this graph for
decode steps and the step graph for prefills (engine/backends.py); export checks both against the eager
net (training/export/parity.py).

Its weights are not stored twice: `share_weights` turns every initializer it has in common with the
step graph into ONNX external data pointing at that tensor's bytes inside model.onnx (the decode file is
~30 KB of nodes, and any ONNX tool that loads it from its folder reads the step graph's bytes).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from contract import IDX, LOGITS, POS, cache_names, present_names
from training.export.fused import MS, Builder, mlp, qkv_weights, skip_ln


def fused_decode_model(weights: dict[str, np.ndarray], n_layer: int, n_head: int, block_size: int) -> onnx.ModelProto:
    """The decode graph of a GPT with these weights: idx [B, 1], pos, *cache -> logits, *present."""
    b = Builder(weights)
    vocab, n_embd = weights["lm_head.weight"].shape
    _embed(b, block_size)
    x, h, h_bias = "pos_emb", "tok_emb", None
    for i in range(n_layer):
        x = skip_ln(b, h, x, h_bias, f"blocks.{i}.ln_1", f"ln1_{i}", f"x1_{i}")  # layer 0: wte + wpe
        x, h, h_bias = mlp(b, i, _attention(b, i, f"ln1_{i}", n_head), x)
    skip_ln(b, h, x, h_bias, "ln_f", "ln_f")
    b.node("MatMul", ["ln_f", b.weight("lm_head.wT", weights["lm_head.weight"].T)], ["logits2"])
    b.node("Unsqueeze", ["logits2", "ax1"], [LOGITS])
    return _io(b, n_layer, n_head, vocab, n_embd)


def _embed(b: Builder, block_size: int) -> None:
    """tok_emb = wte[idx[:, 0]], pos_emb = wpe[min(pos, block_size - 1)], both [B, n_embd] (summed by
    the first layer's skip_ln); and the kernel's lengths, once for all layers: seqlens
    int32 [B] = pos (a row's length after this token, minus one) and total int32 = max(pos) + 1."""
    b.node("Squeeze", [IDX, b.const("ax1", np.array([1], np.int64))], ["tokens"])
    b.node("Min", [POS, b.const("last_pos", np.array(block_size - 1, np.int64))], ["positions"])
    b.node("Gather", [b.weight("wte", b.weights["lm_head.weight"]), "tokens"], ["tok_emb"])
    b.node("Gather", [b.weight("wpe", b.weights["wpe.weight"]), "positions"], ["pos_emb"])
    b.node("Cast", [POS], ["seqlens"], to=TensorProto.INT32)
    b.node("ReduceMax", ["seqlens"], ["max_pos"], keepdims=0)
    b.node("Add", ["max_pos", b.const("one_i32", np.array(1, np.int32))], ["total"])


def _attention(b: Builder, i: int, x: str, n_head: int) -> str:
    """Layer i's attention for one new token per row, its cache written in place; returns the output
    projection's product (its bias goes to the next skip_ln)."""
    w, p = b.weights, f"blocks.{i}.attn."
    wqkv, bqkv = qkv_weights(b, i, n_head)
    qkv = b.node("Add", [b.node("MatMul", [x, wqkv], [f"qkv0_{i}"]), bqkv], [f"qkv_{i}"])  # ORT: one Gemm
    qkv = b.node("Unsqueeze", [qkv, "ax1"], [f"qkv3_{i}"])  # [B, 1, 3C]: q, k, v heads packed, in order
    cache_k, cache_v = cache_names(i + 1)[-2:]
    present_k, present_v = present_names(i + 1)[-2:]
    y = b.node(
        "GroupQueryAttention",
        [qkv, "", "", cache_k, cache_v, "seqlens", "total"],
        [f"y3_{i}", present_k, present_v],
        MS,
        num_heads=n_head,
        kv_num_heads=n_head,
        scale=1.0,  # folded into the query's weights
    )
    y = b.node("Squeeze", [y, "ax1"], [f"y_{i}"])
    return b.node("MatMul", [y, b.weight(p + "wo", w[p + "c_proj.weight"].T)], [f"attn_{i}"])


def _io(b: Builder, n_layer: int, n_head: int, vocab: int, n_embd: int) -> onnx.ModelProto:
    """The model around b's nodes, with the decode graph's inputs and outputs (contract/graph.py)."""
    d = n_embd // n_head

    def cache(names: list[str]) -> list[onnx.ValueInfoProto]:
        return [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", n_head, "columns", d]) for n in names]

    graph = helper.make_graph(
        b.nodes,
        "charlm-gpt-decode",
        [
            helper.make_tensor_value_info(IDX, TensorProto.INT64, ["batch", 1]),
            helper.make_tensor_value_info(POS, TensorProto.INT64, ["batch"]),
            *cache(cache_names(n_layer)),
        ],
        [helper.make_tensor_value_info(LOGITS, TensorProto.FLOAT, ["batch", 1, vocab]), *cache(present_names(n_layer))],
        b.inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid(MS, 1)])
    model.ir_version = 9
    return model


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
