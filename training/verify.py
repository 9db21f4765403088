"""Re-measure a shipped model's split loss with ONNX Runtime alone, by the graph I/O contract.

Torch-free on purpose: it proves that model.onnx, read only through contract/graph.py's names and
shapes, reproduces the test loss the manifest claims.  `python -m training verify models/<name>`.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort

from contract import IDX, LOGITS, POS, Manifest, past_names
from training.data import (
    BUILTIN,
    Vocab,
    load_corpus,
    sequence_examples,
    split_corpus,
    stream_chunks,
    window_examples,
)

BATCH = 1024


def _log_softmax_nll(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Per-row negative log-likelihood of `targets` under `logits` [N, V] (float64 for a stable sum)."""
    z = logits.astype(np.float64)
    z -= z.max(axis=1, keepdims=True)
    logz = np.log(np.exp(z).sum(axis=1))
    return logz - z[np.arange(len(targets)), targets]


def onnx_split_loss(model_dir: Path, split: str = "test", data_path: str | None = None) -> float:
    """Mean NLL (nats/char) of `split`, rebuilt from the manifest's data record, through model.onnx."""
    model_dir = Path(model_dir)
    manifest = Manifest.load(model_dir)
    manifest.verify_files(model_dir)
    dataset = manifest.data.name if data_path is None and manifest.data.name in BUILTIN else None
    corpus = load_corpus(dataset, data_path, manifest.format)
    if corpus.sha256 != manifest.data.sha256:
        raise ValueError(f"the data file is not the one {manifest.name} was trained on (sha256 differs)")
    vocab = Vocab.build(corpus.text, corpus.format)
    if list(vocab.chars) != manifest.vocab:
        raise ValueError("the vocabulary rebuilt from the data differs from the manifest's")
    splits = split_corpus(corpus, vocab, manifest.data.split_seed)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(
        str(model_dir / manifest.files["onnx"].path), options, providers=["CPUExecutionProvider"]
    )
    samples = splits.get(split)
    if manifest.arch != "gpt":
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
    for i in range(0, len(x), BATCH):
        xb, yb = x[i : i + BATCH], y[i : i + BATCH]
        t, c = _gpt_nll(session, manifest, xb, yb)
        total, count = total + t, count + c
    return total / count


def _gpt_nll(session: ort.InferenceSession, manifest: Manifest, x: np.ndarray, y: np.ndarray) -> tuple[float, int]:
    """Feed every position through the step graph one token at a time (the decode path), summing NLL."""
    names = past_names(manifest.n_layer)
    cache = {n: np.zeros((len(x), manifest.n_head, 0, manifest.head_dim), np.float32) for n in names}
    outputs = [LOGITS, *(n.replace("past_", "present_") for n in names)]
    total, count = 0.0, 0
    for t in range(x.shape[1]):
        logits, *presents = session.run(outputs, {IDX: x[:, t : t + 1], POS: np.array([t], np.int64), **cache})
        cache = dict(zip(names, presents, strict=True))
        keep = y[:, t] != -1
        if keep.any():
            total += float(_log_softmax_nll(logits[keep], y[keep, t]).sum())
            count += int(keep.sum())
    return total, count


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: python -m training verify MODEL_DIR [MODEL_DIR ...]", file=sys.stderr)
        return 2
    worst = 0.0
    for folder in argv:
        manifest = Manifest.load(Path(folder))
        loss = onnx_split_loss(Path(folder))
        diff = abs(loss - manifest.metrics.test_loss)
        worst = max(worst, diff)
        print(f"{manifest.name}: onnx test loss {loss:.4f}, manifest {manifest.metrics.test_loss:.4f}, diff {diff:.4f}")
    return 0 if worst <= 0.01 else 1
