"""Re-measure a shipped model's split loss with ONNX Runtime alone, by the graph I/O contract.

Torch-free on purpose: it proves that model.onnx, read only through contract/graph.py's names and
shapes, reproduces the test loss the manifest claims.  `python -m training verify models/<name>`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort

from contract import IDX, LOGITS, POS, Manifest, ManifestError, family, key_shape, past_names, value_shape
from training.data import sequence_examples, stream_chunks, window_examples
from training.model_split import split_samples

__all__ = ["onnx_split_loss", "split_samples"]

BATCH = 1024
GPT_BATCH = 128  # whole blocks per call: attention scores grow with batch x block_size^2


def _log_softmax_nll(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Per-row negative log-likelihood of `targets` under `logits` [N, V] (float64 for a stable sum)."""
    z = logits.astype(np.float64)
    z -= z.max(axis=1, keepdims=True)
    logz = np.log(np.exp(z).sum(axis=1))
    return logz - z[np.arange(len(targets)), targets]


def onnx_split_loss(
    model_dir: Path,
    split: str = "test",
    data_path: str | None = None,
    limit: int | None = None,
    graph: Path | None = None,
) -> float:
    """Mean NLL (nats/char) of `split`, rebuilt from the manifest's data record, through model.onnx (or
    `graph`, e.g. its int8 copy); `limit`: only the first samples (lines) or blocks (stream), as
    `--via --limit` scores them."""
    model_dir = Path(model_dir)
    Manifest.load(model_dir).verify_files(model_dir)
    manifest, samples = split_samples(model_dir, split, data_path)
    if limit is not None:
        keep = limit if manifest.boundary_token is not None else None
        samples = samples[:keep] if keep else [samples[0][: limit * manifest.block_size + 1]]
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    graph = graph or model_dir / manifest.files["onnx"].path
    session = ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])
    if not family(manifest.arch).kv_cache:
        x, y = window_examples(samples, manifest.block_size, manifest.boundary_token)
        nll = [
            _log_softmax_nll(session.run([LOGITS], {IDX: x[i : i + BATCH]})[0], y[i : i + BATCH])
            for i in range(0, len(x), BATCH)
        ]
        return float(np.concatenate(nll).mean())
    if manifest.boundary_token is not None:
        x, y = sequence_examples(samples, manifest.block_size, manifest.boundary_token)
    else:
        x, y = stream_chunks(samples[0], manifest.block_size)
    total, count = 0.0, 0
    for i in range(0, len(x), GPT_BATCH):
        xb, yb = x[i : i + GPT_BATCH], y[i : i + GPT_BATCH]
        t, c = _gpt_nll(session, manifest, xb, yb)
        total, count = total + t, count + c
    return total / count


def _gpt_nll(session: ort.InferenceSession, manifest: Manifest, x: np.ndarray, y: np.ndarray) -> tuple[float, int]:
    """Score whole blocks in one call each: the v2 step graph from an empty cache (pos 0) returns
    logits for every position, exactly the prefill a server runs on a prompt."""
    batch, heads, dim = len(x), manifest.n_head, manifest.head_dim
    feeds = {IDX: x, POS: np.zeros(batch, np.int64)}
    for j, name in enumerate(past_names(manifest.n_layer)):
        feeds[name] = np.zeros(
            key_shape(batch, heads, dim, 0) if j % 2 == 0 else value_shape(batch, heads, dim, 0), np.float32
        )
    (logits,) = session.run([LOGITS], feeds)  # [B, T, V]
    keep = y != -1
    return float(_log_softmax_nll(logits[keep], y[keep]).sum()), int(keep.sum())


ONNX_TOLERANCE = 0.01  # model.onnx against the manifest (the export's own parity bound is far tighter)
HTTP_TOLERANCE = 1e-3  # a server against a reference: it runs the same graph, so only float noise differs


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m training verify",
        description="Re-measure each model folder's test loss through model.onnx with ONNX Runtime alone "
        f"and compare it with its manifest's (exit 1 when one differs by more than {ONNX_TOLERANCE:g}). "
        f"With --via: through a server, compared at {HTTP_TOLERANCE:g} with the manifest's figure, or with "
        "--limit N with model.onnx's loss on the same N samples (a subset's loss is not the split's).",
    )
    parser.add_argument("folders", nargs="+", metavar="MODEL_DIR")
    parser.add_argument("--data", help="the data file, for a model trained on a user's file")
    parser.add_argument(
        "--via",
        metavar="URL",
        help="score the split through a running charlm server's /v1/completions (echo + logprobs) instead",
    )
    parser.add_argument(
        "--limit",
        type=int,
        help="with --via: only the first N samples (lines) or blocks (stream), compared with model.onnx on them",
    )
    return parser


def _measure(folder: Path, args: argparse.Namespace) -> tuple[float, float, str]:
    """(measured loss, reference, what the reference is) for one folder."""
    manifest = Manifest.load(folder)
    if not args.via:
        return onnx_split_loss(folder, data_path=args.data), manifest.metrics.test_loss, "manifest"
    from training.verify_http import http_split_loss

    loss = http_split_loss(args.via, folder, data_path=args.data, limit=args.limit)
    if args.limit is None:
        return loss, manifest.metrics.test_loss, "manifest"
    return loss, onnx_split_loss(folder, data_path=args.data, limit=args.limit), f"onnx on the first {args.limit}"


def main(argv: list[str]) -> int:
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:  # --help (0) and usage errors (2), as codes
        return exc.code if isinstance(exc.code, int) else 2
    if args.limit is not None and (args.limit < 1 or not args.via):
        print("error: --limit needs --via and N >= 1", file=sys.stderr)
        return 2
    worst = 0.0
    for folder in map(Path, args.folders):
        try:
            if not folder.is_dir():
                raise ValueError(f"{folder}: no such model folder")
            name = Manifest.load(folder).name
            loss, reference, against = _measure(folder, args)
        except (ManifestError, ValueError, OSError, RuntimeError) as exc:  # DataError is a ValueError
            print(f"error: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}", file=sys.stderr)
            return 2
        diff = abs(loss - reference)
        worst = max(worst, diff)
        how = "http" if args.via else "onnx"
        print(f"{name}: {how} test loss {loss:.6f}, {against} {reference:.6f}, diff {diff:.6f}")
    return 0 if worst <= (HTTP_TOLERANCE if args.via else ONNX_TOLERANCE) else 1
