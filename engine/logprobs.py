"""The model's own log-probabilities: log-softmax of the raw logits (before temperature, top-k, top-p,
penalties and bias, vLLM's `raw_logprobs`), so a score does not depend on how the text was sampled."""

from __future__ import annotations

import numpy as np

from engine.types import TokenLogprob


def log_softmax(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64)
    x -= x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def token_logprobs(logits: np.ndarray, tokens: np.ndarray, top: int) -> list[TokenLogprob]:
    """Per row: the logprob of `tokens[i]` and the `top` most likely tokens with theirs."""
    lp = log_softmax(logits)
    chosen = lp[np.arange(len(tokens)), tokens]
    if top <= 0:
        return [TokenLogprob(int(t), float(v)) for t, v in zip(tokens.tolist(), chosen.tolist(), strict=True)]
    order = np.argsort(-lp, axis=1, kind="stable")[:, :top]
    best = np.take_along_axis(lp, order, axis=1)
    return [
        TokenLogprob(int(t), float(v), tuple(zip(o, b, strict=True)))
        for t, v, o, b in zip(tokens.tolist(), chosen.tolist(), order.tolist(), best.tolist(), strict=True)
    ]


def prompt_logprobs(context: list[int], n_prompt: int, logits: np.ndarray, top: int) -> tuple[TokenLogprob | None, ...]:
    """Logprobs of the prompt: the last `n_prompt` tokens of `context`, scored by `logits` [m, V], whose
    row i predicts context[len - m + i] (the runner scored the tail it could see). A prompt token with no
    context before it (a `stream` model's first character, or one cut off by block_size) gets None."""
    m = len(logits)
    scored = token_logprobs(logits, np.asarray(context[len(context) - m :], dtype=np.int64), top) if m else []
    first = len(context) - m  # the first context index that has a score
    return tuple(scored[f - first] if f >= first else None for f in range(len(context) - n_prompt, len(context)))
