"""export_checkpoint: checkpoint folder -> model folder (exports, weights, manifest.json, README.md).

Everything is written to a staging folder next to the destination and moved into place only after
every format has passed its parity checks (logits: parity.py; decoded texts through the service's
engine: decode_parity.py), so a failed export never leaves a half-written model.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import torch

from contract import WEIGHTS_FILE, Manifest
from training.checkpoint import CheckpointError, load_checkpoint
from training.export import onnx, torchscript
from training.export.card import render_card
from training.export.decode_parity import check_decode_parity
from training.export.errors import ExportError
from training.export.graphs import GraphSpec, Runner, graph_spec
from training.export.manifest import build_manifest, file_entry
from training.export.novelty import measure
from training.export.parity import check_parity
from training.export.preflight import DEFAULT_FORMATS, FILES, preflight
from training.export.samples import draw_samples

EXPORTERS: dict[str, Callable[[GraphSpec, Path], None]] = {
    "onnx": onnx.export_onnx,
    "torchscript": torchscript.export_torchscript,
}
LOADERS: dict[str, Callable[[Path, GraphSpec], Runner]] = {
    "onnx": onnx.load_runner,
    "torchscript": lambda path, spec: torchscript.load_runner(path),
}


def export_checkpoint(
    ckpt_dir: Path | str,
    out_dir: Path | str,
    formats: Iterable[str] = DEFAULT_FORMATS,
    force: bool = False,
    name: str | None = None,
    command: str | None = None,
) -> Manifest:
    """Export, check parity, write manifest and model card; raise ExportError (one line) on failure.

    `command` is the export command the card shows (default: this export's own command line); the
    upgrade and re-export paths pass theirs, since their checkpoint folder is a temporary one."""
    ckpt_dir, out_dir = Path(ckpt_dir), Path(out_dir)
    formats, name = preflight(ckpt_dir, out_dir, formats, force, name)
    with _one_thread():
        return _export(ckpt_dir, out_dir, formats, name, command)


def _export(ckpt_dir: Path, out_dir: Path, formats: tuple[str, ...], name: str, command: str | None) -> Manifest:
    try:
        net, meta = load_checkpoint(ckpt_dir)  # full validation of checkpoint.json and the weights
    except CheckpointError as exc:
        raise ExportError(str(exc)) from None
    spec = graph_spec(meta.arch, net)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; the folder it becomes is for others to read
    try:
        files = {}
        for fmt in formats:
            path = staging / FILES[fmt]
            EXPORTERS[fmt](spec, path)
            check_parity(spec, LOADERS[fmt](path, spec), fmt)
            files[fmt] = file_entry(path)
        staged = {fmt: staging / FILES[fmt] for fmt in formats}
        check_decode_parity(net, meta.arch, meta.vocab, meta.boundary_token, staged)  # the server's decoder
        weights = staging / WEIGHTS_FILE  # the very file the net was loaded from
        shutil.copyfile(ckpt_dir / WEIGHTS_FILE, weights)
        meta, novelty, hashes = measure(net, meta, staging)  # lines data at hand: hash set, novelty rate
        decode = onnx.decode_path(staged["onnx"]) if spec.is_step and "onnx" in staged else None
        manifest = build_manifest(name, meta, net, files, file_entry(weights), hashes)
        if decode is not None:  # the GPT decode graph export_onnx wrote beside the step graph
            manifest = manifest.model_copy(update={"onnx_decode": file_entry(decode)})
        manifest.save(staging)
        samples = draw_samples(net, meta.arch, meta.vocab, meta.boundary_token)
        command = command or _export_command(ckpt_dir, out_dir, formats, name)
        curve = _curve(ckpt_dir, staging / CURVE_FILE)
        card = render_card(manifest, meta.model, samples, command, novelty, curve=curve)
        (staging / "README.md").write_text(card)
        Manifest.load(staging).verify_files(staging)  # what the service will do at start-up
        _move_into_place(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return manifest


CURVE_FILE = "curve.png"


def _curve(ckpt_dir: Path, path: Path) -> bool:
    """The run's loss curve, small, for the card: drawn from the run folder's lossi.csv and metrics.jsonl,
    or a re-exported model folder's own curve.png; False when neither exists (nothing is invented)."""
    from training.plots import draw_curve

    if draw_curve(ckpt_dir, path, size=(5.5, 3.2), dpi=80):
        return True
    if (ckpt_dir / CURVE_FILE).is_file():
        shutil.copyfile(ckpt_dir / CURVE_FILE, path)
        return True
    return False


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """Run torch on one intra-op thread: these graphs and batches are too small to gain from more, and
    on shared cores OpenMP's spin-waiting burnt 8x the CPU (200 s vs 25 s, a 1.2M-parameter GPT)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _move_into_place(staging: Path, out_dir: Path) -> None:
    """Swap the finished staging folder in; the previous model (with --force) is removed after."""
    old = None
    if out_dir.exists():
        old = out_dir.with_name(f".{out_dir.name}.{os.getpid()}.old")
        out_dir.rename(old)
    staging.rename(out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _export_command(ckpt_dir: Path, out_dir: Path, formats: tuple[str, ...], name: str) -> str:
    args = ["python", "-m", "training", "export", _shown(ckpt_dir), "--out", _shown(out_dir)]
    if formats != DEFAULT_FORMATS:
        args += ["--formats", ",".join(formats)]
    if name != out_dir.resolve().name:
        args += ["--name", name]
    return shlex.join(args)


def _shown(path: Path) -> str:
    """A path relative to the working directory when it lies under it (commands run from the repo root)."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)
