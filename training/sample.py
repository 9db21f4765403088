"""Sampling from an eager PyTorch net through the service's engine (`TorchEagerBackend`).

`training sample`, the end-of-run samples and the model cards decode here, by the engine's rules: a
`lines` model starts at its boundary token (window nets see a window full of it) and stops at the next
one, a `stream` model starts after a newline, a GPT past block_size continues from its last
block_size // 2 characters, and temperature / top-k / top-p / seed / stop mean what they mean on the
server. So a sample printed by training is one the server could have produced from the same weights.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from torch import nn

from contract import family
from engine import Completion, Engine, Generator, SamplingParams, TorchEagerBackend, derive_seed, model_spec

MAX_SLOTS = 256  # sequences decoded together; more wait for a free slot (Generator)


def eager_generator(
    net: nn.Module, arch: str, vocab: Sequence[str], boundary_token: int | None, device: str = "cpu", slots: int = 64
) -> Generator:
    """An engine over the eager net: the same slots, KV cache, sampler and stop rules as the server."""
    cfg = net.cfg
    gpt = {"n_layer": cfg.n_layer, "n_head": cfg.n_head, "head_dim": cfg.head_dim} if family(arch).kv_cache else {}
    spec = model_spec("eager", arch, vocab, boundary_token, cfg.block_size, **gpt)
    return Generator(Engine.from_backend(spec, TorchEagerBackend(net, spec, device), slots=slots))


def complete(
    net: nn.Module,
    arch: str,
    vocab: Sequence[str],
    boundary_token: int | None,
    n: int,
    prompt: str = "",
    params: SamplingParams | None = None,
    device: str = "cpu",
) -> list[Completion]:
    """n completions of `prompt`; choice i is seeded with derive_seed(seed, i), as the server's n does."""
    params = params or SamplingParams()
    gen = eager_generator(net, arch, vocab, boundary_token, device, slots=min(n, MAX_SLOTS))
    per_choice = [_with_seed(params, derive_seed(params.seed, i)) for i in range(n)]
    return gen.generate([prompt] * n, per_choice)


def sample_texts(
    model: nn.Module,
    meta,
    n: int,
    prompt: str = "",
    temperature: float = 1.0,
    seed: int | None = None,
    max_new_tokens: int | None = None,
    device: str = "cpu",
    top_k: int | None = None,
    top_p: float = 1.0,
    stop: Sequence[str] = (),
) -> list[str]:
    """n samples of a checkpoint (`meta`: a CheckpointMeta), each with its prompt in front.
    ValueError (one line) for a prompt outside the vocabulary or bad sampling options."""
    check_prompt(prompt, meta.vocab, meta.boundary_token)
    params = SamplingParams(
        temperature=temperature, top_k=top_k, top_p=top_p, seed=seed, max_new_tokens=max_new_tokens, stop=tuple(stop)
    )
    done = complete(model, meta.arch, meta.vocab, meta.boundary_token, n, prompt, params, device)
    return [prompt + c.text for c in done]


def _with_seed(params: SamplingParams, seed: int | None) -> SamplingParams:
    return replace(params, seed=seed)


def check_prompt(prompt: str, vocab: Sequence[str], boundary_token: int | None) -> None:
    """ValueError naming every prompt character the model cannot take (the boundary mark included)."""
    known = set(vocab)
    bad = list(dict.fromkeys(ch for ch in prompt if ch not in known))
    if boundary_token is not None and vocab[boundary_token] in prompt:
        bad.append(vocab[boundary_token])
    if bad:
        raise ValueError(f"prompt has characters outside the vocabulary: {', '.join(map(repr, bad))}")
