"""REFERENCE ONLY: v1's step graph (`pos [1]` for the whole batch, no mask between rows, the cache returned
as `concat(past, new)`), exported as v1 was (dynamo, opset 18, one file) from the same weights, for
benchmarks/v1_reference.py's engine. Not used by the service."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

OPSET = 18


def _v1_module(net: Any) -> Any:
    import torch
    import torch.nn.functional as F
    from torch import nn

    class V1Step(nn.Module):
        """idx [B, new], pos [1], *past [B, H, past, D] -> (logits [B, V], *concat(past, new))."""

        def __init__(self, net: nn.Module):
            super().__init__()
            self.net = net

        def forward(self, idx: torch.Tensor, pos: torch.Tensor, *past: torch.Tensor) -> tuple[torch.Tensor, ...]:
            net = self.net
            x = net.wte(idx) + net.wpe(pos + torch.arange(idx.shape[1]))
            presents: list[torch.Tensor] = []
            for i, block in enumerate(net.blocks):
                attn = block.attn
                q, k, v = attn._heads(block.ln_1(x))
                k, v = torch.cat([past[2 * i], k], dim=2), torch.cat([past[2 * i + 1], v], dim=2)
                new, total = q.shape[2], k.shape[2]
                mask = torch.arange(total)[None, :] <= (torch.arange(new)[:, None] + (total - new))
                x = x + attn._merge(F.scaled_dot_product_attention(q, k, v, attn_mask=mask))
                x = x + block.mlp(block.ln_2(x))
                presents += [k, v]
            return (net.lm_head(net.ln_f(x[:, -1, :])), *presents)

    return V1Step(net).eval()


def weights_digest(net: Any) -> str:
    """A short hash of the net's weights: names the cached export, so new weights get a new graph."""

    digest = hashlib.sha256()
    for name, tensor in sorted(net.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def export_v1(net: Any, folder: Path) -> Path:
    """v1's ONNX step graph of `net` (dynamic batch, new and past, as v1 exported it), cached in `folder`.

    The dynamo export takes 10-40 s, so the file is kept under a name made of the weights' hash.
    """
    import contextlib
    import io
    import logging
    import warnings

    import torch
    from torch.export import Dim

    path = Path(folder) / f"v1-{weights_digest(net)}.onnx"
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    c = net.cfg
    batch, new, past = 5, min(3, c.block_size), 4
    shape = (batch, c.n_head, past, c.head_dim)
    cache = tuple(torch.randn(shape) for _ in range(2 * c.n_layer))
    example = (torch.randint(0, c.vocab_size, (batch, new)), torch.tensor([past if past + new <= c.block_size else 0]))
    b, length = Dim("batch", min=1), Dim("past", min=0)
    shapes = {
        "idx": {0: b, 1: Dim("new", min=1, max=c.block_size)},
        "pos": None,
        "past": tuple({0: b, 2: length} for _ in range(2 * c.n_layer)),
    }
    kv = [f"{kind}_{i}" for i in range(c.n_layer) for kind in ("key", "value")]
    tmp = path.with_suffix(".tmp.onnx")
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            torch.onnx.export(
                _v1_module(net),
                (*example, *cache),
                str(tmp),
                dynamo=True,
                external_data=False,
                opset_version=OPSET,
                input_names=["idx", "pos", *(f"past_{n}" for n in kv)],
                output_names=["logits", *(f"present_{n}" for n in kv)],
                dynamic_shapes=shapes,
                verbose=False,
            )
    finally:
        logger.setLevel(level)
    tmp.replace(path)
    return path
