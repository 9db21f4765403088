"""`python -m training export CKPT_DIR --out models/<name>`: the command-line face of export_checkpoint.

Expected failures (no checkpoint, unknown architecture, unevaluated checkpoint, existing output
folder, parity) print one line on stderr and return 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from training.export.errors import ExportError
from training.export.preflight import DEFAULT_FORMATS, preflight


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m training export",
        description="Export a checkpoint to a model folder: ONNX / TorchScript, manifest.json, README.md.",
    )
    parser.add_argument("ckpt_dir", metavar="CKPT_DIR", help="checkpoint folder (checkpoint.json + model.safetensors)")
    parser.add_argument("--out", required=True, help="model folder to create, e.g. models/names-gpt")
    parser.add_argument(
        "--formats",
        default=",".join(DEFAULT_FORMATS),
        help="comma-separated: onnx, torchscript (default: %(default)s)",
    )
    parser.add_argument("--force", action="store_true", help="replace an existing model folder")
    parser.add_argument("--name", help="model name in the manifest (default: the --out folder's name)")
    return parser


def main_export(argv: list[str]) -> int:
    """Run the export; 0 on success, 2 with a one-line reason on stderr on an expected failure."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # usage errors (argparse printed them) and --help: a code, not an exit
        return exc.code if isinstance(exc.code, int) else 2
    formats = args.formats.split(",")
    try:
        preflight(Path(args.ckpt_dir), Path(args.out), formats, args.force, args.name)  # before torch loads
        from training.export.core import export_checkpoint

        manifest = export_checkpoint(args.ckpt_dir, args.out, formats=formats, force=args.force, name=args.name)
    except ExportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    files = ", ".join(f"{e.path} ({e.bytes:,} bytes)" for e in manifest.files.values())
    print(f"exported {manifest.name} ({manifest.arch}, {manifest.n_params:,} params) to {args.out}: {files}")
    return 0


if __name__ == "__main__":
    sys.exit(main_export(sys.argv[1:]))
