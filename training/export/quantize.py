"""The optional int8 graph: `python -m training export ... --int8`, or `python -m training.export.quantize
models/<name> ...` for a folder that is already exported (its float files are left byte for byte).

onnxruntime's `quantize_dynamic` stores the MatMul weights as int8 (activations are quantized per call),
so the graph keeps the float graph's inputs and outputs (contract/graph.py) and any ONNX Runtime runs it.
Its test loss and the float graph's are measured here the same way (`training verify`'s ONNX Runtime
scoring of the manifest's test split); the int8 file and the manifest's `onnx_int8` are written only when
the loss rose by at most MAX_LOSS_RISE, else the folder is left as it was and the reason is returned.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from contract import INT8_FILE, MANIFEST_FILE, Manifest, ManifestError, QuantizedGraph
from training.export.errors import ExportError
from training.export.manifest import file_entry

MAX_LOSS_RISE = 0.01  # nats per character: what issue 19 allows an int8 graph to cost


@dataclass(frozen=True)
class Int8Outcome:
    """What --int8 did for one folder: shipped (file + manifest written) or not, and the two losses."""

    name: str
    float_loss: float
    int8_loss: float
    shipped: bool
    bytes: int

    @property
    def rise(self) -> float:
        return self.int8_loss - self.float_loss

    def line(self) -> str:
        verdict = (
            f"wrote {INT8_FILE} ({self.bytes:,} bytes)"
            if self.shipped
            else f"not shipped: the rise is over {MAX_LOSS_RISE}; the folder is unchanged"
        )
        return (
            f"{self.name}: int8 test loss {self.int8_loss:.4f} vs float {self.float_loss:.4f} "
            f"({self.rise:+.4f}): {verdict}"
        )


def quantize_graph(src: Path, dst: Path) -> None:
    """Dynamic int8 quantization of an ONNX file (weights QInt8, per tensor).

    The quantizer learns each tensor's type from ONNX shape inference, which stops at com.microsoft
    operators (the fused GPT graph's BiasGelu, GroupQueryAttention): every tensor of these graphs is
    float32, so that is the type it is told to assume where inference has none."""
    from onnx import TensorProto
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # quantize_dynamic logs a "consider pre-processing" hint at WARNING
    try:
        quantize_dynamic(src, dst, weight_type=QuantType.QInt8, extra_options={"DefaultTensorType": TensorProto.FLOAT})
    finally:
        root.setLevel(level)


def add_int8(folder: Path, data_path: str | None = None) -> Int8Outcome:
    """Quantize folder's ONNX graph, measure both test losses, ship the int8 graph when it costs <= 0.01."""
    from training.verify import onnx_split_loss

    folder = Path(folder)
    try:
        manifest = Manifest.load(folder)
    except ManifestError as exc:
        raise ExportError(str(exc)) from None
    if "onnx" not in manifest.files:
        raise ExportError(f"{folder}: --int8 quantizes the ONNX graph, and this model has none (--formats onnx)")
    data_path = data_path or manifest.training.config.get("data")
    pending = folder / f".{INT8_FILE}.{os.getpid()}.tmp"
    try:
        quantize_graph(folder / manifest.files["onnx"].path, pending)
        try:
            float_loss = onnx_split_loss(folder, data_path=data_path)
            int8_loss = onnx_split_loss(folder, data_path=data_path, graph=pending)
        except (ValueError, OSError) as exc:  # DataError is a ValueError: the test split needs the data
            raise ExportError(f"{folder}: cannot measure the int8 test loss: {exc}") from None
        outcome = Int8Outcome(manifest.name, float_loss, int8_loss, int8_loss - float_loss <= MAX_LOSS_RISE, 0)
        if not outcome.shipped:
            return outcome
        target = folder / INT8_FILE
        pending.replace(target)
        graph = QuantizedGraph(file=file_entry(target), test_loss=int8_loss, float_test_loss=float_loss)
        _save_manifest(folder, manifest.model_copy(update={"onnx_int8": graph}))
        return Int8Outcome(manifest.name, float_loss, int8_loss, True, graph.file.bytes)
    finally:
        pending.unlink(missing_ok=True)


def _save_manifest(folder: Path, manifest: Manifest) -> None:
    """Replace manifest.json atomically, validated as the service will read it."""
    tmp = folder / f".{MANIFEST_FILE}.{os.getpid()}.tmp"
    tmp.write_text(Manifest.model_validate(manifest.model_dump()).model_dump_json(indent=2) + "\n")
    tmp.replace(folder / MANIFEST_FILE)
    Manifest.load(folder).verify_files(folder)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m training.export.quantize",
        description="Add an int8 ONNX graph to exported model folders when it costs <= 0.01 test loss "
        "(float files untouched).",
    )
    parser.add_argument("folders", nargs="+", metavar="MODEL_DIR")
    parser.add_argument("--data", help="the data file, for a model trained on a user's file (the test split)")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 2
    for folder in map(Path, args.folders):
        try:
            if not (folder / MANIFEST_FILE).is_file():
                raise ExportError(f"{folder}: not a model folder (no {MANIFEST_FILE})")
            print(add_int8(folder, args.data).line())
        except ExportError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
