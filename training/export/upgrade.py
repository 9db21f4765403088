"""`python -m training upgrade models/NAME`: a schema-1 model folder -> graph contract v2, without retraining.

A v1 folder holds no weights file, but its model.ts does: the net is rebuilt from that state dict (keys
prefixed `net.` by the export wrapper), its config inferred from the weights' shapes and the v1
manifest, saved as a temporary checkpoint and exported again by the ordinary exporter (parity checks
included). The new folder is then re-verified, its test loss through ONNX Runtime against the
manifest's, and only then swapped in place of the old one. `--from-model` re-exports a v2 folder from
its own model.safetensors and net_config, the same way.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

from contract import MANIFEST_FILE, SCHEMA_VERSION, WEIGHTS_FILE, Manifest, ManifestError, sha256_of
from training.export.errors import ExportError

VERIFY_TOL = 1e-4
V1_KEYS = ("name", "arch", "vocab", "format", "boundary_token", "block_size", "files", "metrics", "data", "training")


class AlreadyCurrent(Exception):
    """The folder is already at the current schema: nothing to do."""


def read_v1(folder: Path) -> dict[str, Any]:
    """The raw schema-1 manifest of `folder`; AlreadyCurrent for a v2 folder, ExportError otherwise."""
    path = folder / MANIFEST_FILE
    if not folder.is_dir():
        raise ExportError(f"{folder}: no such model folder")
    if not path.is_file():
        raise ExportError(f"{folder}: not a model folder (no {MANIFEST_FILE})")
    try:
        raw = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ExportError(f"{path}: not valid JSON ({exc})") from None
    version = raw.get("schema_version") if isinstance(raw, dict) else None
    if version == SCHEMA_VERSION:
        raise AlreadyCurrent(f"{folder}: already schema_version {SCHEMA_VERSION} (graph contract v2); nothing to do")
    if version != 1:
        raise ExportError(f"{path}: schema_version {version!r} is not one this command upgrades (1)")
    missing = [k for k in V1_KEYS if k not in raw]
    ts = raw.get("files", {}).get("torchscript") if isinstance(raw.get("files"), dict) else None
    if missing or not isinstance(ts, dict):
        raise ExportError(f"{path}: not a complete v1 manifest (missing {', '.join(missing) or 'files.torchscript'})")
    ts_path = folder / str(ts.get("path"))
    if not ts_path.is_file():
        raise ExportError(f"{ts_path}: missing; a v1 folder's weights are read from its TorchScript file")
    if sha256_of(ts_path) != ts.get("sha256"):
        raise ExportError(f"{ts_path}: sha256 does not match the manifest; not trusting its weights")
    return raw


def torchscript_weights(path: Path) -> dict[str, Any]:
    """The net's state dict inside a v1 model.ts (the export wrapper holds the net as `net`)."""
    import torch

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        try:
            state = torch.jit.load(str(path), map_location="cpu").state_dict()
        except RuntimeError as exc:
            raise ExportError(f"{path}: not a loadable TorchScript file ({str(exc).splitlines()[0]})") from None
    if not state or not all(k.startswith("net.") for k in state):
        raise ExportError(f"{path}: its weights are not those of a charlm export (no `net.` prefix)")
    return {k.removeprefix("net."): v for k, v in state.items()}


def infer_config(raw: dict[str, Any], state: dict[str, Any]) -> dict[str, Any]:
    """The net config (training.nets.build's dict) of a v1 model, from the weights' shapes and the
    manifest; fields the weights cannot tell (GPT dropout) come from the training config, if recorded."""
    from training.nets import FAMILIES

    arch = raw["arch"]
    found: dict[str, Any] = {"vocab_size": len(raw["vocab"]), "block_size": raw["block_size"]}
    try:
        if arch == "gpt":
            layers = {int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k))}
            found |= {
                "n_layer": len(layers),
                "n_head": raw["n_head"],
                "n_embd": raw["n_head"] * raw["head_dim"],
                "bias": "blocks.0.attn.c_attn.bias" in state,
            }
            if found["n_layer"] != raw["n_layer"] or state["wte.weight"].shape[1] != found["n_embd"]:
                raise ExportError("the TorchScript weights do not match the manifest's n_layer / n_head / head_dim")
        elif arch == "wavenet":
            found |= {"n_embd": state["body.0.weight"].shape[1], "n_hidden": state["head.weight"].shape[1]}
        elif arch == "mlp":
            found |= {
                "n_embd": state["wte.weight"].shape[1],
                "n_hidden": state["hidden.weight"].shape[0],
                "batchnorm": "norm.running_mean" in state,
            }
    except KeyError as exc:
        raise ExportError(f"the TorchScript weights have no {exc.args[0]!r}, expected of a {arch}") from None
    recorded = raw["training"].get("config", {}).get("model") or {}
    fields = FAMILIES[arch][0].model_fields
    return {k: found[k] if k in found else recorded[k] for k in fields if k in found or k in recorded}


def checkpoint_meta(raw: dict[str, Any], net_config: dict[str, Any]):
    """A CheckpointMeta carrying a manifest's provenance (raw: its JSON, v1 or v2)."""
    from training.checkpoint import meta_from_manifest

    return meta_from_manifest(raw, net_config)


def upgrade_folder(folder: Path | str, data_path: str | None = None, verify: bool = True) -> Manifest:
    """Upgrade one v1 folder in place (atomically); raise AlreadyCurrent or ExportError (one line)."""
    import torch

    from training.checkpoint import save_checkpoint
    from training.nets import build

    folder = Path(folder)
    raw = read_v1(folder)
    state = torchscript_weights(folder / raw["files"]["torchscript"]["path"])
    config = infer_config(raw, state)
    try:
        net = build(raw["arch"], config)
        net.load_state_dict(state, strict=True)
    except (ValueError, RuntimeError) as exc:
        raise ExportError(f"{folder}: cannot rebuild the net from model.ts ({str(exc).splitlines()[0]})") from None
    with tempfile.TemporaryDirectory(prefix="charlm-upgrade-") as tmp:
        ckpt = Path(tmp) / "checkpoint"
        save_checkpoint(ckpt, net.eval(), checkpoint_meta(raw, config))
        formats = ["onnx", "torchscript"]  # both, whatever the v1 folder had: verification reads the ONNX
        command = _card_command(folder) or f"python -m training upgrade {folder}"
        with torch.no_grad():
            return _replace(folder, ckpt, formats, raw["name"], command, data_path, verify)


def reexport_folder(
    src: Path | str, out: Path | str, formats: list[str], force: bool = False, name: str | None = None
) -> Manifest:
    """`export --from-model`: a v2 folder's own weights and net config -> a fresh export at `out`."""
    from training.export.core import export_checkpoint
    from training.export.preflight import META_FILE

    src = Path(src)
    try:
        manifest = Manifest.load(src)
        manifest.verify_files(src)
    except ManifestError as exc:
        raise ExportError(str(exc)) from None
    raw = json.loads((src / MANIFEST_FILE).read_text())
    with tempfile.TemporaryDirectory(prefix="charlm-reexport-") as tmp:
        ckpt = Path(tmp)
        shutil.copyfile(src / manifest.weights.path, ckpt / WEIGHTS_FILE)
        if (src / "curve.png").is_file():  # the card's curve travels with the model (core.CURVE_FILE)
            shutil.copyfile(src / "curve.png", ckpt / "curve.png")
        meta = checkpoint_meta(raw, manifest.net_config)
        (ckpt / META_FILE).write_text(meta.model_dump_json(indent=2) + "\n")
        command = f"python -m training export --from-model {src} --out {out}"
        if src.resolve() == Path(out).resolve():  # in place: keep the card's provenance
            command = _card_command(src) or command
        # the name defaults to the --out folder's, as for any export: a copy beside its source must not
        # keep the source's name (a server given both folders refuses both: "name used twice")
        return export_checkpoint(ckpt, out, formats=formats, force=force, name=name, command=command)


def _replace(
    folder: Path, ckpt: Path, formats: list[str], name: str, command: str, data_path: str | None, verify: bool
) -> Manifest:
    """Export next to `folder`, re-verify, then swap: the old folder stays until the new one is proven."""
    from training.export.core import export_checkpoint

    staging = folder.with_name(f".{folder.name}.upgrade.{os.getpid()}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        manifest = export_checkpoint(ckpt, staging, formats=formats, name=name, command=command)
        if verify:
            _verify(staging, manifest, data_path)
        swap_in(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return manifest


def swap_in(staging: Path, folder: Path) -> None:
    """`staging` takes `folder`'s place; the old folder is kept aside until then, and removed after."""
    old = folder.with_name(f".{folder.name}.{os.getpid()}.old")
    folder.rename(old)
    staging.rename(folder)
    shutil.rmtree(old, ignore_errors=True)


def _verify(folder: Path, manifest: Manifest, data_path: str | None) -> None:
    from training.verify import onnx_split_loss

    try:
        loss = onnx_split_loss(folder, "test", data_path)
    except (ValueError, OSError, ManifestError) as exc:
        raise ExportError(f"cannot re-verify the upgraded model: {str(exc).splitlines()[0]}") from None
    want = manifest.metrics.test_loss
    if not abs(loss - want) <= VERIFY_TOL:
        raise ExportError(f"upgraded model's ONNX test loss {loss:.6f} != manifest's {want:.6f} (tol {VERIFY_TOL:g})")


def _card_command(folder: Path) -> str | None:
    """The export command the old model card shows (its provenance), kept in the new card."""
    card = folder / "README.md"
    if not card.is_file():
        return None
    lines = [ln.strip() for ln in card.read_text(errors="replace").splitlines()]
    return next((ln for ln in lines if ln.startswith("python -m training export ")), None)
