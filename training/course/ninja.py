"""`python -m training ninja`: the MLP's backward pass written by hand, checked against autograd, tensor by
tensor ("Building makemore part 4: becoming a backprop ninja").

The forward pass is the lecture's, broken into its atoms so that every intermediate has a gradient to
check: embedding lookup, concatenation, linear, BatchNorm (mean, variance with Bessel's correction,
normalise, scale and shift), tanh, linear, and cross-entropy spelled out (max-subtraction, exp, sum,
reciprocal, log, pick). Exercise 1 backpropagates through each atom; exercise 2 is cross-entropy's
gradient in one line (softmax - one-hot) / n; exercise 3 is BatchNorm's in one line. `--steps N` then
trains the net with only the hand-written (exercise 2 + 3) gradients, as exercise 4 does.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from training.data import Vocab, load_corpus, split_corpus, window_examples

EPS = 1e-5  # BatchNorm's
LECTURE_SEED = 2147483647


@dataclass(frozen=True)
class Shape:
    block_size: int = 3
    n_embd: int = 10
    n_hidden: int = 64
    batch: int = 32


def init_params(vocab: int, s: Shape, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """The lecture's initialisation; biases and BN parameters small but non-zero, so that a wrong
    gradient cannot hide behind a zero."""
    fan_in = s.n_embd * s.block_size
    p = {
        "C": torch.randn((vocab, s.n_embd), generator=gen),
        "W1": torch.randn((fan_in, s.n_hidden), generator=gen) * (5 / 3) / fan_in**0.5,
        "b1": torch.randn(s.n_hidden, generator=gen) * 0.1,  # useless before BN; here to be checked
        "W2": torch.randn((s.n_hidden, vocab), generator=gen) * 0.1,
        "b2": torch.randn(vocab, generator=gen) * 0.1,
        "bngain": torch.randn((1, s.n_hidden), generator=gen) * 0.1 + 1.0,
        "bnbias": torch.randn((1, s.n_hidden), generator=gen) * 0.1,
    }
    for t in p.values():
        t.requires_grad = True
    return p


def forward(p: dict[str, torch.Tensor], xb: torch.Tensor, yb: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every intermediate of the forward pass, by name (the lecture's names); "loss" last."""
    n = xb.shape[0]
    t: dict[str, torch.Tensor] = {}
    t["emb"] = p["C"][xb]
    t["embcat"] = t["emb"].view(n, -1)
    t["hprebn"] = t["embcat"] @ p["W1"] + p["b1"]
    t["bnmeani"] = 1 / n * t["hprebn"].sum(0, keepdim=True)
    t["bndiff"] = t["hprebn"] - t["bnmeani"]
    t["bndiff2"] = t["bndiff"] ** 2
    t["bnvar"] = 1 / (n - 1) * t["bndiff2"].sum(0, keepdim=True)  # Bessel's correction
    t["bnvar_inv"] = (t["bnvar"] + EPS) ** -0.5
    t["bnraw"] = t["bndiff"] * t["bnvar_inv"]
    t["hpreact"] = p["bngain"] * t["bnraw"] + p["bnbias"]
    t["h"] = torch.tanh(t["hpreact"])
    t["logits"] = t["h"] @ p["W2"] + p["b2"]
    t["logit_maxes"] = t["logits"].max(1, keepdim=True).values
    t["norm_logits"] = t["logits"] - t["logit_maxes"]  # for numerical stability
    t["counts"] = t["norm_logits"].exp()
    t["counts_sum"] = t["counts"].sum(1, keepdim=True)
    t["counts_sum_inv"] = t["counts_sum"] ** -1
    t["probs"] = t["counts"] * t["counts_sum_inv"]
    t["logprobs"] = t["probs"].log()
    t["loss"] = -t["logprobs"][range(n), yb].mean()
    return t


def backward_atoms(p: dict[str, torch.Tensor], t: dict[str, torch.Tensor], xb, yb) -> dict[str, torch.Tensor]:
    """Exercise 1: the chain rule through every atom, from the loss back to the embedding table."""
    n = xb.shape[0]
    d: dict[str, torch.Tensor] = {}
    d["logprobs"] = torch.zeros_like(t["logprobs"])
    d["logprobs"][range(n), yb] = -1.0 / n
    d["probs"] = (1.0 / t["probs"]) * d["logprobs"]
    d["counts_sum_inv"] = (t["counts"] * d["probs"]).sum(1, keepdim=True)
    d["counts_sum"] = -(t["counts_sum"] ** -2) * d["counts_sum_inv"]
    d["counts"] = t["counts_sum_inv"] * d["probs"] + torch.ones_like(t["counts"]) * d["counts_sum"]
    d["norm_logits"] = t["counts"] * d["counts"]
    d["logit_maxes"] = (-d["norm_logits"]).sum(1, keepdim=True)
    one_hot = F.one_hot(t["logits"].max(1).indices, num_classes=t["logits"].shape[1])
    d["logits"] = d["norm_logits"].clone() + one_hot * d["logit_maxes"]
    d["h"] = d["logits"] @ p["W2"].T
    d["W2"] = t["h"].T @ d["logits"]
    d["b2"] = d["logits"].sum(0)
    d["hpreact"] = (1.0 - t["h"] ** 2) * d["h"]
    d["bngain"] = (t["bnraw"] * d["hpreact"]).sum(0, keepdim=True)
    d["bnbias"] = d["hpreact"].sum(0, keepdim=True)
    d["bnraw"] = p["bngain"] * d["hpreact"]
    d["bnvar_inv"] = (t["bndiff"] * d["bnraw"]).sum(0, keepdim=True)
    d["bnvar"] = -0.5 * (t["bnvar"] + EPS) ** -1.5 * d["bnvar_inv"]
    d["bndiff2"] = 1.0 / (n - 1) * torch.ones_like(t["bndiff2"]) * d["bnvar"]
    d["bndiff"] = t["bnvar_inv"] * d["bnraw"] + 2 * t["bndiff"] * d["bndiff2"]
    d["bnmeani"] = (-d["bndiff"]).sum(0, keepdim=True)
    d["hprebn"] = d["bndiff"].clone() + 1.0 / n * torch.ones_like(t["hprebn"]) * d["bnmeani"]
    d["embcat"] = d["hprebn"] @ p["W1"].T
    d["W1"] = t["embcat"].T @ d["hprebn"]
    d["b1"] = d["hprebn"].sum(0)
    d["emb"] = d["embcat"].view(t["emb"].shape)
    d["C"] = torch.zeros_like(p["C"]).index_add_(0, xb.view(-1), d["emb"].view(-1, t["emb"].shape[2]))
    return d


def dlogits_fast(logits: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
    """Exercise 2: cross-entropy's gradient with respect to the logits, (softmax - one-hot) / n."""
    d = F.softmax(logits, 1)
    d[range(len(yb)), yb] -= 1
    return d / len(yb)


def dhprebn_fast(p, t, dhpreact: torch.Tensor) -> torch.Tensor:
    """Exercise 3: BatchNorm's gradient with respect to its input in one expression."""
    n = dhpreact.shape[0]
    bnraw = t["bnraw"]
    return (p["bngain"] * t["bnvar_inv"] / n) * (
        n * dhpreact - dhpreact.sum(0) - n / (n - 1) * bnraw * (dhpreact * bnraw).sum(0)
    )


def names_windows(block_size: int) -> tuple[int, dict[str, tuple[torch.Tensor, torch.Tensor]]]:
    """The vocabulary size and (contexts, next characters) of names.txt's train and val splits."""
    corpus = load_corpus("names", None, "lines")
    vocab = Vocab.build(corpus.text, corpus.format)
    splits = split_corpus(corpus, vocab)
    windows = {}
    for split in ("train", "val"):
        x, y = window_examples(splits.get(split), block_size, vocab.boundary)
        windows[split] = (torch.from_numpy(x), torch.from_numpy(y))
    return vocab.size, windows


def compare(mine: torch.Tensor, autograd: torch.Tensor) -> tuple[bool, bool, float]:
    """(exactly equal, allclose, max abs difference), the lecture's `cmp`."""
    return bool(torch.all(mine == autograd)), torch.allclose(mine, autograd), float((mine - autograd).abs().max())


CHECKED = (
    "logprobs", "probs", "counts_sum_inv", "counts_sum", "counts", "norm_logits", "logit_maxes", "logits",
    "h", "W2", "b2", "hpreact", "bngain", "bnbias", "bnraw", "bnvar_inv", "bnvar", "bndiff2", "bndiff",
    "bnmeani", "hprebn", "embcat", "W1", "b1", "emb", "C",
)  # fmt: skip


def check(vocab: int, x: torch.Tensor, y: torch.Tensor, shape: Shape, seed: int) -> list[tuple[str, bool, bool, float]]:
    """Exercises 1-3 on one batch: (name, exact, approx, maxdiff) for every gradient, the fast ones last."""
    gen = torch.Generator().manual_seed(seed)
    p = init_params(vocab, shape, gen)
    rows = torch.randint(0, len(x), (shape.batch,), generator=gen)
    xb, yb = x[rows], y[rows]
    t = forward(p, xb, yb)
    for tensor in t.values():
        tensor.retain_grad()
    t["loss"].backward()
    with torch.no_grad():
        d = backward_atoms(p, t, xb, yb)
        fast = {"logits (fast)": dlogits_fast(t["logits"], yb), "hprebn (fast)": dhprebn_fast(p, t, t["hpreact"].grad)}
    result = [(name, *compare(d[name], (p.get(name) if name in p else t[name]).grad)) for name in CHECKED]
    return result + [(name, *compare(g, t[name.split()[0]].grad)) for name, g in fast.items()]


@torch.no_grad()
def train_by_hand(vocab: int, windows, shape: Shape, steps: int, seed: int, log=print) -> dict[str, float]:
    """Exercise 4: SGD on the hand-written gradients only (lr 0.1, then 0.01 for the second half); the
    BatchNorm statistics calibrated on the whole train split afterwards, as in the lecture."""
    gen = torch.Generator().manual_seed(seed)
    p = init_params(vocab, shape, gen)
    x, y = windows["train"]
    for i in range(steps):
        rows = torch.randint(0, len(x), (shape.batch,), generator=gen)
        xb, yb = x[rows], y[rows]
        t = forward(p, xb, yb)
        dlogits = dlogits_fast(t["logits"], yb)
        dhpreact = (1.0 - t["h"] ** 2) * (dlogits @ p["W2"].T)
        dhprebn = dhprebn_fast(p, t, dhpreact)
        demb = (dhprebn @ p["W1"].T).view(t["emb"].shape)
        grads = {
            "W2": t["h"].T @ dlogits,
            "b2": dlogits.sum(0),
            "bngain": (t["bnraw"] * dhpreact).sum(0, keepdim=True),
            "bnbias": dhpreact.sum(0, keepdim=True),
            "W1": t["embcat"].T @ dhprebn,
            "b1": dhprebn.sum(0),
            "C": torch.zeros_like(p["C"]).index_add_(0, xb.view(-1), demb.view(-1, shape.n_embd)),
        }
        lr = 0.1 if i < steps // 2 else 0.01
        for name, g in grads.items():
            p[name] -= lr * g
        if i % max(1, steps // 10) == 0 or i == steps - 1:
            log(f"step {i:>6}/{steps}: batch loss {t['loss'].item():.4f}")
    pre = p["C"][x].view(len(x), -1) @ p["W1"] + p["b1"]
    mean, var = pre.mean(0, keepdim=True), pre.var(0, keepdim=True)  # calibrated BatchNorm statistics
    losses = {}
    for split, (xs, ys) in windows.items():
        hpre = p["C"][xs].view(len(xs), -1) @ p["W1"] + p["b1"]
        h = torch.tanh(p["bngain"] * (hpre - mean) * (var + EPS) ** -0.5 + p["bnbias"])
        losses[split] = F.cross_entropy(h @ p["W2"] + p["b2"], ys).item()
    return losses


def ninja_command(args: argparse.Namespace) -> int:
    torch.set_num_threads(1)  # tiny tensors: a second thread only waits (training.run.DEFAULT_THREADS)
    shape = Shape(n_hidden=args.hidden, batch=args.batch)
    vocab, windows = names_windows(shape.block_size)
    print(f"backprop ninja: MLP {shape.block_size}x{shape.n_embd} -> {shape.n_hidden} (BatchNorm, tanh) -> "
          f"{vocab}, batch {shape.batch}; hand-written gradients vs autograd")  # fmt: skip
    rows = check(vocab, *windows["train"], shape, args.seed)
    for name, exact, approx, diff in rows:
        print(f"{name:15s} | exact: {exact!s:5s} | approximate: {approx!s:5s} | maxdiff: {diff:.2e}")
    worst = max(r[3] for r in rows)
    ok = all(r[2] for r in rows)
    print(f"{'all' if ok else 'NOT all'} {len(rows)} gradients match autograd (largest difference {worst:.2e})")
    if args.steps:
        losses = train_by_hand(vocab, windows, shape, args.steps, args.seed)
        print(f"trained {args.steps} steps on hand-written gradients: train {losses['train']:.4f}, "
              f"val {losses['val']:.4f} nats/char (BatchNorm calibrated on the train split)")  # fmt: skip
    return 0 if ok else 1
