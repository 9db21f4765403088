"""The shipped weights, in every net the engine benchmark compares: charlm's eager GPT and HF's GPT-2.

A model folder's `model.safetensors` + `manifest.json`'s `net_config` give the eager net
(training.checkpoint.load_checkpoint reads model folders as checkpoints).

nanoGPT's GPT is GPT-2 exactly (pre-LayerNorm blocks, learned positions, exact-erf GELU, tied head), so
`to_hf` copies the weights into `transformers.GPT2LMHeadModel` (Conv1D stores Linear's weight
transposed); `check_hf_parity` proves it on logits before anything is timed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from benchmarks.common import BenchError

PARITY_ATOL = 1e-4
_LINEARS = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")


def read_manifest(folder: Path) -> dict[str, Any]:
    path = Path(folder) / "manifest.json"
    if not path.is_file():
        raise BenchError(f"{path} is missing: run `make models` first")
    return json.loads(path.read_text())


def load_eager(folder: Path) -> Any:
    """The eager `training.nets` GPT of a model folder (its weights and net_config, files checked against
    the manifest), in eval mode: the loader `training sample|eval` use on model folders."""
    from training.checkpoint import CheckpointError, load_checkpoint

    try:
        net, meta = load_checkpoint(Path(folder))
    except CheckpointError as exc:
        raise BenchError(f"{exc} (run `make models`, or `python -m training upgrade` on a v1 folder)") from None
    if meta.arch != "gpt":
        raise BenchError(f"{Path(folder).name} is a {meta.arch}, not a gpt")
    return net


def to_hf(net: Any) -> Any:
    """`transformers.GPT2LMHeadModel` computing what `net` computes (eval mode, eager attention)."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    c = net.cfg
    config = GPT2Config(
        vocab_size=c.vocab_size,
        n_positions=c.block_size,
        n_embd=c.n_embd,
        n_layer=c.n_layer,
        n_head=c.n_head,
        activation_function="gelu",  # exact erf GELU, as F.gelu (not GPT-2's tanh "gelu_new")
        layer_norm_epsilon=1e-5,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=None,  # no end token: every row runs its full length
        pad_token_id=None,  # nothing is padded (and HF's padding warning stays quiet)
    )
    hf = GPT2LMHeadModel(config).eval()
    src = net.state_dict()
    dst: dict[str, Any] = {"transformer.wte.weight": src["wte.weight"], "transformer.wpe.weight": src["wpe.weight"]}
    for name in ("ln_f.weight", "ln_f.bias"):
        dst[f"transformer.{name}"] = src.get(name, torch.zeros(c.n_embd) if name.endswith("bias") else None)
    for i in range(c.n_layer):
        for ln in ("ln_1", "ln_2"):
            dst[f"transformer.h.{i}.{ln}.weight"] = src[f"blocks.{i}.{ln}.weight"]
            dst[f"transformer.h.{i}.{ln}.bias"] = src.get(f"blocks.{i}.{ln}.bias", torch.zeros(c.n_embd))
        for lin in _LINEARS:
            w = src[f"blocks.{i}.{lin}.weight"]  # Linear [out, in] -> Conv1D [in, out]
            dst[f"transformer.h.{i}.{lin}.weight"] = w.t().contiguous()
            dst[f"transformer.h.{i}.{lin}.bias"] = src.get(f"blocks.{i}.{lin}.bias", torch.zeros(w.shape[0]))
    missing, unexpected = hf.load_state_dict(dst, strict=False)
    missing = [k for k in missing if k != "lm_head.weight" and not k.endswith(".attn.bias")]
    if missing or unexpected:
        raise BenchError(f"GPT-2 mapping incomplete: missing {missing[:3]}, unexpected {unexpected[:3]}")
    hf.tie_weights()
    return hf


def check_hf_parity(net: Any, hf: Any, batch: int = 4, seed: int = 0) -> float:
    """Max |logits diff| of HF against charlm's forward and step over random full windows; BenchError > 1e-4."""
    import torch

    c = net.cfg
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, c.vocab_size, (batch, c.block_size), generator=gen)
    with torch.no_grad():
        theirs = hf(input_ids=idx, attention_mask=torch.ones_like(idx)).logits
        full, _ = net(idx)  # training's forward, and the v2 step graph's path (per-row pos, empty cache)
        step, _ = net.step(idx, torch.zeros(batch, dtype=torch.long), net.empty_cache(batch))
    diff = max(float((full - theirs).abs().max()), float((step - theirs).abs().max()))
    if not diff <= PARITY_ATOL:
        raise BenchError(f"HF GPT-2 and charlm's GPT disagree: max |logits diff| {diff:.2e} > {PARITY_ATOL:g}")
    return diff


def hf_generate(hf: Any, batch: int, prompt_ids: list[int], new_tokens: int, seed: int) -> int:
    """`GPT2LMHeadModel.generate` with KV cache, pure sampling, exactly `new_tokens` per row; tokens made."""
    import torch

    torch.manual_seed(seed)
    idx = torch.tensor([prompt_ids] * batch, dtype=torch.long)
    with torch.no_grad():
        out = hf.generate(
            idx,
            attention_mask=torch.ones_like(idx),
            do_sample=True,
            top_k=0,
            top_p=1.0,
            temperature=1.0,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            use_cache=True,
        )
    return int(out.shape[0] * (out.shape[1] - idx.shape[1]))
