"""How a (family, data format) pair turns splits into training batches and exact split losses.

Window nets see (context, next char) pairs; a GPT on `lines` data sees one padded sample per row;
a GPT on `stream` data sees random windows (training) or non-overlapping chunks (exact evaluation).

`test_unseen` (lines data only) is the test split without the samples that also occur in the train
split: names.txt has duplicates, 11.8% of its test names are train names too, so the course-compatible
test loss is about 0.02 nats optimistic; this split measures generalisation honestly beside it.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from contract import family
from training.data import Splits, sequence_examples, stream_chunks, window_examples

EVAL_BATCH = 512
SPLITS = ("train", "val", "test")


def unseen_samples(splits: Splits) -> list[np.ndarray]:
    """The test samples whose text does not occur in the train split."""
    train = {s.tobytes() for s in splits.train}
    return [s for s in splits.test if s.tobytes() not in train]


class Task:
    """Batches for training and the exact mean NLL (nats/char) of a whole split."""

    def __init__(self, arch: str, splits: Splits, block_size: int, boundary: int | None):
        self.block_size = block_size
        self.stream = family(arch).kv_cache and boundary is None
        self.padded = family(arch).kv_cache and boundary is not None  # one sample per row, padded to block_size
        self.tensors: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        named = {split: splits.get(split) for split in SPLITS}
        if boundary is not None:
            named["test_unseen"] = unseen_samples(splits)
        for split, samples in named.items():
            if not samples:
                continue
            if not family(arch).kv_cache:
                x, y = window_examples(samples, block_size, boundary)
            elif boundary is not None:
                x, y = sequence_examples(samples, block_size, boundary)
            else:
                x, y = samples[0], np.empty(0, dtype=np.int64)  # raw ids; windows cut per batch
            self.tensors[split] = (torch.from_numpy(x), torch.from_numpy(y))

    def batch(self, split: str, batch_size: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.tensors[split]
        if self.stream:
            starts = torch.randint(len(x) - self.block_size, (batch_size,), generator=gen)
            offsets = starts[:, None] + torch.arange(self.block_size + 1)[None, :]
            chunk = x[offsets]
            return chunk[:, :-1], chunk[:, 1:]
        rows = torch.randint(len(x), (batch_size,), generator=gen)
        x, y = x[rows], y[rows]
        if self.padded:  # drop the all-padding tail columns: same loss (causal), ~30% fewer tokens on names
            width = int((y != -1).sum(1).max())
            x, y = x[:, :width], y[:, :width]
        return x, y

    def has(self, split: str) -> bool:
        return split in self.tensors

    def eval_set(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The whole split as (inputs, targets): what `exact_loss` averages over."""
        x, y = self.tensors[split]
        if self.stream:
            cx, cy = stream_chunks(x.numpy(), self.block_size)
            return torch.from_numpy(cx), torch.from_numpy(cy)
        return x, y

    @torch.no_grad()
    def exact_loss(self, model: nn.Module, split: str, device: str = "cpu") -> float:
        """Mean NLL over every predicted character of the split (padding targets excluded)."""
        was_training = model.training
        model.eval()
        x, y = self.eval_set(split)
        total, count = 0.0, 0
        for i in range(0, len(x), EVAL_BATCH):
            xb, yb = x[i : i + EVAL_BATCH].to(device), y[i : i + EVAL_BATCH].to(device)
            logits, _ = model(xb)
            nll = F.cross_entropy(logits.flatten(0, -2).float(), yb.flatten(), ignore_index=-1, reduction="sum")
            total += nll.item()
            count += int((yb != -1).sum())
        model.train(was_training)
        return total / count
