"""`python -m training export CKPT_DIR --out models/<name>` (or `--from-model models/<name>`) and
`python -m training upgrade models/<name> ...`: the command-line faces of export_checkpoint and upgrade.

Expected failures (no checkpoint, unknown architecture, unevaluated checkpoint, existing output
folder, parity) print one line on stderr and return 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from contract import MANIFEST_FILE
from training.export.errors import ExportError
from training.export.preflight import DEFAULT_FORMATS, check_destination, check_formats, preflight


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m training export",
        description="Export a checkpoint to a model folder: ONNX / TorchScript, manifest.json, README.md.",
    )
    parser.add_argument(
        "ckpt_dir", metavar="CKPT_DIR", nargs="?", help="checkpoint folder (checkpoint.json + model.safetensors)"
    )
    parser.add_argument(
        "--from-model", metavar="MODEL_DIR", help="re-export a v2 model folder from its own weights and net_config"
    )
    parser.add_argument("--out", required=True, help="model folder to create, e.g. models/names-gpt")
    parser.add_argument(
        "--formats",
        default=",".join(DEFAULT_FORMATS),
        help="comma-separated: onnx, torchscript (default: %(default)s)",
    )
    parser.add_argument("--force", action="store_true", help="replace an existing model folder")
    parser.add_argument("--name", help="model name in the manifest (default: the --out folder's name)")
    parser.add_argument(
        "--int8",
        action="store_true",
        help="also write an int8 ONNX graph (dynamic quantization), if its test loss rises by <= 0.01",
    )
    return parser


def main_export(argv: list[str]) -> int:
    """Run the export; 0 on success, 2 with a one-line reason on stderr on an expected failure."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # usage errors (argparse printed them) and --help: a code, not an exit
        return exc.code if isinstance(exc.code, int) else 2
    formats = args.formats.split(",")
    if (args.ckpt_dir is None) == (args.from_model is None):
        print("error: give either CKPT_DIR or --from-model MODEL_DIR", file=sys.stderr)
        return 2
    if args.int8 and "onnx" not in formats:
        print("error: --int8 quantizes the ONNX graph: add onnx to --formats", file=sys.stderr)
        return 2
    try:
        if args.from_model is not None:
            manifest = _from_model(Path(args.from_model), Path(args.out), formats, args.force, args.name)
        else:
            preflight(Path(args.ckpt_dir), Path(args.out), formats, args.force, args.name)  # before torch loads
            from training.export.core import export_checkpoint

            manifest = export_checkpoint(args.ckpt_dir, args.out, formats=formats, force=args.force, name=args.name)
    except ExportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    decode = [manifest.onnx_decode] if manifest.onnx_decode is not None else []
    files = ", ".join(f"{e.path} ({e.bytes:,} bytes)" for e in [*manifest.files.values(), *decode])
    print(f"exported {manifest.name} ({manifest.arch}, {manifest.n_params:,} params) to {args.out}: {files}")
    if args.int8:
        from training.export.quantize import add_int8

        try:
            print(add_int8(Path(args.out)).line())
        except ExportError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    return 0


def _from_model(src: Path, out: Path, formats: list[str], force: bool, name: str | None):
    if not (src / MANIFEST_FILE).is_file():
        raise ExportError(f"{src}: not a model folder (no {MANIFEST_FILE})")
    formats = list(check_formats(formats))
    check_destination(out, force)
    from training.export.upgrade import reexport_folder

    return reexport_folder(src, out, formats, force=force, name=name)


def main_upgrade(argv: list[str]) -> int:
    """Upgrade each v1 folder in place; 0 when every folder is (now) v2, 2 with one line on a failure."""
    parser = argparse.ArgumentParser(
        prog="python -m training upgrade",
        description="Upgrade schema-1 model folders to graph contract v2 from the weights in their model.ts, "
        "re-verify their test loss with ONNX Runtime and swap them in atomically; in a v2 GPT folder, rewrite "
        "a decode graph of the old contract (the step graph's I/O) from its weights, keeping every other file.",
    )
    parser.add_argument("folders", nargs="+", metavar="MODEL_DIR")
    parser.add_argument("--data", help="the data file, for a model trained on a user's file (re-verification)")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 2
    from training.export.decode_rewrite import rewrite_decode, stale_decode
    from training.export.upgrade import AlreadyCurrent, upgrade_folder

    for folder in args.folders:
        try:
            if stale_decode(Path(folder)):
                d = rewrite_decode(Path(folder)).onnx_decode
                print(
                    f"rewrote {folder}/{d.path} to the in-place decode contract ({d.bytes:,} bytes); other files kept"
                )
                continue
            manifest = upgrade_folder(Path(folder), data_path=args.data)
        except AlreadyCurrent as exc:
            print(exc)
            continue
        except ExportError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        files = ", ".join(f"{e.path} ({e.bytes:,} bytes)" for e in [*manifest.files.values(), manifest.weights])
        print(f"upgraded {folder} to schema_version 2: {files}; test loss {manifest.metrics.test_loss:.4f} re-verified")
    return 0


if __name__ == "__main__":
    sys.exit(main_export(sys.argv[1:]))
