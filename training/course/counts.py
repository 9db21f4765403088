"""`python -m training counts`: makemore part 1's counting bigram, the closed-form model the learned one
(`--config names_bigram`) can only approach. Count every character pair of the train split, add
`--smoothing` to each count ("model smoothing": no pair gets probability 0), normalise each row. It is
written as a checkpoint (a Bigram net whose logits are the log-probabilities) so that `sample`, `eval`
and `export` work on it like on any run; counts.png is the lecture's table of counts.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from training.checkpoint import save_checkpoint
from training.config import load_config
from training.nets.bigram import count_bigrams, fit_counts
from training.run import Run, set_threads
from training.sample import sample_texts


def sequences(samples: list[np.ndarray], boundary: int | None) -> list[list[int]]:
    """Each sample wrapped in the boundary token (lines data), or the stream as one sequence."""
    if boundary is None:
        return [s.tolist() for s in samples]
    return [[boundary, *s.tolist(), boundary] for s in samples]


def plot_counts(counts, chars: list[str], path: Path, title: str) -> None:
    """The count matrix as an image, each cell labelled with its pair and count (small vocabularies)."""
    from matplotlib.figure import Figure

    v = len(chars)
    fig = Figure(figsize=(12, 12) if v <= 32 else (10, 10), layout="constrained")
    ax = fig.add_subplot()
    ax.imshow(counts.numpy(), cmap="Blues")
    if v <= 32:  # the lecture's figure: every cell named
        for i in range(v):
            for j in range(v):
                ax.text(j, i, chars[i] + chars[j], ha="center", va="bottom", color="gray", fontsize=7)
                ax.text(j, i, f"{int(counts[i, j])}", ha="center", va="top", color="gray", fontsize=7)
    ax.set(title=title, xlabel="next character", ylabel="current character")
    ax.axis("off" if v <= 32 else "on")
    fig.savefig(path, dpi=80)


def counts_command(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, [*args.set, "samples=0"], data=args.data, format=args.format)
    out = Path(args.out or f"runs/{cfg.name}-counts")
    set_threads(cfg)  # one thread unless --set threads=N, as training
    run = Run(cfg, out)
    vocab, boundary = run.vocab, run.vocab.boundary
    train = sequences(run.splits.get("train"), boundary)
    model = fit_counts(train, vocab.size, args.smoothing)
    splits = ["train", "val", "test"] + (["test_unseen"] if run.task.has("test_unseen") else [])
    losses = {split: run.task.exact_loss(model, split) for split in splits}
    out.mkdir(parents=True, exist_ok=True)
    meta = run.meta(
        train_loss=losses["train"], val_loss=losses["val"], test_loss=losses["test"],
        test_loss_unseen=losses.get("test_unseen"),
    )  # fmt: skip
    # how the table was made, for the model card's Reproduce command (training.export.reproduce)
    meta.train_config.update(fit="counts", smoothing=args.smoothing, set=list(args.set))
    save_checkpoint(out, model, meta)
    counts = count_bigrams(train, vocab.size)
    shown = [c if c != "\n" else "\\n" for c in vocab.chars]
    plot_counts(counts, shown, out / "counts.png", f"{cfg.name}: bigram counts of the train split")
    pairs = int(counts.sum())
    print(f"counts bigram on {run.corpus.name} (train split, {pairs:,} pairs), smoothing {args.smoothing:g}")
    print("  " + ", ".join(f"{split} {loss:.4f}" for split, loss in losses.items()) + " nats/char")
    for text in sample_texts(model, meta, n=args.n, seed=cfg.seed):
        print(f"  {text!r}" if meta.format == "stream" else f"  {text}")
    print(f"checkpoint: {out} (sample, eval and export it like a run); counts: {out / 'counts.png'}")
    return 0
