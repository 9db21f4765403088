"""ONNX export of a GraphSpec (one self-contained .onnx file) and an ONNX Runtime runner for checks.

GPT step graphs are written directly with fused kernels (training/export/fused.py), each with a decode
graph beside it (one new token per row: fused_decode.py, model.decode.onnx). Window models are
traced; exporter choice: the torch.export-based exporter (dynamo=True). Both exporters give correct numbers
for the GPT step graph at dynamic batch / new / past (past=0 included) in torch 2.13, but:
- dynamo=True emits opset 18 natively (torchlib), keeps batch / new / past symbolic in the outputs,
  and gives a graph about 2.5x smaller (no Constant/Shape/Gather/Cast chains);
- dynamo=False (TorchScript-based) is deprecated and shares the fate of torch.jit.
The price is export time (seconds rather than a fraction of one), which is paid once per model.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch.export import Dim

from contract import DECODE_FILE
from training.export.errors import ExportError
from training.export.fused import fused_step_model
from training.export.fused_decode import fused_decode_model, share_weights
from training.export.graphs import GraphSpec, Runner

OPSET = 18


def export_onnx(spec: GraphSpec, path: Path) -> None:
    """Write spec's graph to `path` with a dynamic batch (and, for GPT, dynamic new, past and per-row pos).

    GPT's step graph is written node by node with ONNX Runtime's fused kernels (training/export/fused.py)
    from the net's weights; window models are traced."""
    if spec.is_step:
        weights = {k: v.detach().cpu().numpy() for k, v in spec.module.net.state_dict().items()}
        step = fused_step_model(weights, spec.n_layer, spec.n_head, spec.block_size)
        onnx.save_model(step, str(path), save_as_external_data=False)
        _check_file(path, spec.input_names, spec.output_names)
        export_decode(spec, path)
        return
    shapes = {"idx": {0: Dim("batch", min=1)}}
    with _quiet():
        torch.onnx.export(
            spec.module,
            spec.example,
            str(path),
            dynamo=True,
            external_data=False,  # one file: the service and other tools load model.onnx alone
            opset_version=OPSET,
            input_names=spec.input_names,
            output_names=spec.output_names,
            dynamic_shapes=shapes,
            verbose=False,
        )
    _strip_debug_info(path)
    _check_file(path, spec.input_names, spec.output_names)


def export_decode(spec: GraphSpec, path: Path) -> Path:
    """Write a GPT's decode graph beside its saved step graph `path`, its weights read from that file's
    bytes (not a second copy); returns where. Also what `training upgrade` rewrites an old one with."""
    weights = {k: v.detach().cpu().numpy() for k, v in spec.module.net.state_dict().items()}
    decode = fused_decode_model(weights, spec.n_layer, spec.n_head, spec.block_size)
    share_weights(decode, path)
    onnx.save_model(decode, str(decode_path(path)))
    _check_file(decode_path(path), *spec.decode_io, external=path.name)
    return decode_path(path)


def decode_path(path: Path) -> Path:
    """Where a GPT's decode graph is written beside its step graph `path`."""
    return path.with_name(DECODE_FILE)


def load_runner(path: Path, spec: GraphSpec) -> Runner:
    """ONNX Runtime on one thread, after checking the I/O names against the contract. A GPT's calls with
    one new token per row go to its decode graph, the rest to the step graph, as the engine routes them
    (engine/backends.py), so the parity checks cover both."""
    step = _session(path, spec.input_names, spec.output_names)
    inputs = spec.input_names

    def run_step(arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
        return step.run(None, dict(zip(inputs, arrays, strict=True)))

    if not spec.is_step:
        return run_step
    run_decode = _v2_over_decode(_session(decode_path(path), *spec.decode_io), spec)

    def run(arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
        return run_decode(arrays) if arrays[0].shape[1] == 1 else run_step(arrays)

    return run


def _v2_over_decode(session: ort.InferenceSession, spec: GraphSpec) -> Runner:
    """The decode graph behind the step graph's I/O (contract v2), so that one parity check covers both.

    The decode graph takes whole caches [B, H, columns, D] (keys not transposed) and returns them with
    row b's new key and value at column pos[b]; the step graph takes past keys [B, H, D, past] and values
    [B, H, past, D] and returns only the new entries. So: lay the past out as caches of
    max(past, max(pos) + 1) columns (zeros past `past`: the graph writes column pos[b] before reading it),
    run, and hand back column pos[b] of each row's present as new_key [B, H, D, 1] / new_value [B, H, 1, D]."""
    names = spec.decode_io[0]

    def run(arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
        idx, pos, past = arrays[0], arrays[1], arrays[2:]
        columns = max(past[1].shape[2], int(pos.max()) + 1)
        caches = []
        for j, kv in enumerate(past):
            kv = kv.swapaxes(2, 3) if j % 2 == 0 else kv  # keys: [B, H, D, past] -> [B, H, past, D]
            grown = np.zeros((*kv.shape[:2], columns, kv.shape[3]), np.float32)
            grown[:, :, : kv.shape[2]] = kv
            caches.append(grown)
        logits, *present = session.run(None, dict(zip(names, [idx, pos, *caches], strict=True)))
        rows = np.arange(len(idx))
        new = [p[rows, :, pos] for p in present]  # [B, H, D]: row b's column pos[b]
        return [logits, *(n[..., None] if j % 2 == 0 else n[:, :, None] for j, n in enumerate(new))]

    return run


def _session(path: Path, inputs: list[str], outputs: list[str]) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    got = ([i.name for i in session.get_inputs()], [o.name for o in session.get_outputs()])
    if got != (inputs, outputs):
        raise ExportError(f"{path}: graph I/O {got[0]} -> {got[1]} does not match the contract")
    return session


def _strip_debug_info(path: Path) -> None:
    """Drop the exporter's per-node debug metadata (FX node text, Python stack traces with this
    machine's paths): for small models it is most of the file, and it does not belong in a release."""
    model = onnx.load(str(path))
    for node in model.graph.node:
        del node.metadata_props[:]
    onnx.save_model(model, str(path), save_as_external_data=False)


def _check_file(path: Path, inputs: list[str], outputs: list[str], external: str | None = None) -> None:
    """One file, opset >= 18, no external data (what every consumer of model.onnx relies on); a GPT's
    decode graph may read its weights from `external`, the step graph beside it, and from nothing else."""
    model = onnx.load(str(path), load_external_data=False)
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
    if opset < OPSET:
        raise ExportError(f"{path}: opset {opset} < {OPSET}")
    for t in model.graph.initializer:
        if onnx.external_data_helper.uses_external_data(t) and _location(t) != external:
            raise ExportError(f"{path}: weights were written to an external file")
    names = ([i.name for i in model.graph.input], [o.name for o in model.graph.output])
    if names != (inputs, outputs):
        raise ExportError(f"{path}: graph I/O {names[0]} -> {names[1]} does not match the contract")


def _location(tensor: onnx.TensorProto) -> str | None:
    return next((e.value for e in tensor.external_data if e.key == "location"), None)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Hide the exporter's chatter (torchvision op registration, axis renaming, pytree notices)."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*axis name.*will not be used")
            warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)", category=FutureWarning)
            yield
    finally:
        logger.setLevel(level)
