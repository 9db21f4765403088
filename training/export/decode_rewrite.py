"""`python -m training upgrade models/NAME` on a GPT folder whose decode graph predates the in-place
contract (contract/graph.py): rewrite model.decode.onnx alone, from the folder's own weights.

The first decode graphs had the step graph's I/O (past_key_i transposed in, new_key_i out); the engine
now runs the one that updates its cache in place. Only that file changes: the weights, the step graph
(whose bytes the decode graph reads its weights from), the TorchScript file and an int8 graph with its
measured loss stay byte for byte, so nothing else needs re-verifying. The new graph passes the export's
own checks (logits parity, decode parity through the engine) in a staging copy of the folder, which is
then swapped in with the manifest's `onnx_decode` entry and the model card's line for it updated.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import onnx

from contract import IDX, LOGITS, POS, Manifest, ManifestError, new_kv_names, past_names
from training.export.errors import ExportError

CARD = "README.md"


def stale_decode(folder: Path) -> bool:
    """Whether `folder` is a v2 model folder whose listed decode graph has the old decode I/O (the
    step graph's). False for anything else, which the ordinary upgrade path then judges."""
    try:
        manifest = Manifest.load(folder)
    except ManifestError:
        return False
    entry = manifest.onnx_decode
    if entry is None or not (folder / entry.path).is_file():
        return False
    try:
        graph = onnx.load(str(folder / entry.path), load_external_data=False).graph
    except Exception:  # not a graph at all: verify_files / the server report it, not this check
        return False
    n = manifest.n_layer or 0
    io = ([i.name for i in graph.input], [o.name for o in graph.output])
    return io == ([IDX, POS, *past_names(n)], [LOGITS, *new_kv_names(n)])


def rewrite_decode(folder: Path) -> Manifest:
    """Replace `folder`'s old decode graph with the current one (atomically); ExportError on failure."""
    from training.checkpoint import CheckpointError, load_checkpoint
    from training.export import onnx as onnx_export
    from training.export.decode_parity import check_decode_parity
    from training.export.graphs import graph_spec
    from training.export.manifest import file_entry
    from training.export.parity import check_parity
    from training.export.upgrade import swap_in

    try:
        net, meta = load_checkpoint(folder)  # checks every file against the manifest first
    except CheckpointError as exc:
        raise ExportError(str(exc)) from None
    manifest = Manifest.load(folder)
    staging = folder.with_name(f".{folder.name}.decode.{os.getpid()}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        shutil.copytree(folder, staging)
        step = staging / manifest.files["onnx"].path
        spec = graph_spec(meta.arch, net)
        decode = onnx_export.export_decode(spec, step)
        check_parity(spec, onnx_export.load_runner(step, spec), "onnx")
        check_decode_parity(net, meta.arch, meta.vocab, meta.boundary_token, {"onnx": step})
        new = manifest.model_copy(update={"onnx_decode": file_entry(decode)})
        new.save(staging)
        _update_card(staging / CARD, manifest, new)
        Manifest.load(staging).verify_files(staging)
        swap_in(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return new


def _update_card(card: Path, old: Manifest, new: Manifest) -> None:
    """The card's line for the decode graph (its size, hash and description), the rest as it was."""
    from training.export.card import decode_line

    if not card.is_file() or old.onnx_decode is None or new.onnx_decode is None:
        return
    start = f"- `{old.onnx_decode.path}`:"
    lines = card.read_text().split("\n")
    card.write_text("\n".join(decode_line(new.onnx_decode) if ln.startswith(start) else ln for ln in lines))
