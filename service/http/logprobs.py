"""Log-probabilities in OpenAI's two shapes: the legacy completions one (`tokens`, `token_logprobs`,
`top_logprobs`, `text_offset`) and the chat one (`content: [{token, logprob, bytes, top_logprobs}]`).

A token is one character. Where the model saw no context (a `stream` model's first prompt character)
the logprob is null, as OpenAI's first echoed token. A `lines` model's boundary mark is reported as a
token where it stands (a dropped leading one with a null logprob, the sampled end with its own) and
does not advance `text_offset`: it never appears in the text. As in vLLM, `top_logprobs` always holds
the chosen token besides the k most likely, so it has k or k + 1 entries.
"""

from __future__ import annotations

from dataclasses import dataclass

from engine import TokenLogprob
from service.http.bodies import ChatLogprobs, ChatTokenLogprob, CompletionLogprobs, TopLogprob


@dataclass(frozen=True)
class Piece:
    """One reported token: its text, its score (None: no context) and whether it is part of the text."""

    token: str
    score: TokenLogprob | None
    in_text: bool = True


def pieces(
    vocab: tuple[str, ...],
    mark: str | None,
    *,
    prompt: str | None = None,
    prompt_lps: tuple[TokenLogprob | None, ...] | None = None,
    lead: bool = False,
    lps: tuple[TokenLogprob, ...] | None = None,
    boundary: TokenLogprob | None = None,
) -> list[Piece]:
    """The tokens of (optionally) an echoed prompt, generated text and a sampled boundary, in order."""
    out: list[Piece] = []
    if prompt_lps is not None:
        if lead and mark is not None:
            out.append(Piece(mark, None, False))
        out += [Piece(ch, s) for ch, s in zip(prompt or "", prompt_lps, strict=False)]
    out += [Piece(vocab[s.token], s) for s in lps or ()]
    if boundary is not None and mark is not None:
        out.append(Piece(mark, boundary, False))
    return out


def _top(vocab: tuple[str, ...], s: TokenLogprob) -> dict[str, float]:
    top = {vocab[t]: lp for t, lp in s.top}
    top.setdefault(vocab[s.token], s.logprob)
    return top


def legacy(vocab: tuple[str, ...], items: list[Piece], offset: int) -> tuple[CompletionLogprobs, int]:
    """The legacy shape starting at text offset `offset`; the offset after the last character."""
    tokens, lps, tops, offsets = [], [], [], []
    for p in items:
        tokens.append(p.token)
        lps.append(None if p.score is None else p.score.logprob)
        tops.append(None if p.score is None else _top(vocab, p.score))
        offsets.append(offset)
        offset += len(p.token) if p.in_text else 0
    return CompletionLogprobs(tokens=tokens, token_logprobs=lps, top_logprobs=tops, text_offset=offsets), offset


def chat(vocab: tuple[str, ...], items: list[Piece]) -> ChatLogprobs:
    content = []
    for p in items:
        if p.score is None:
            continue
        top = [TopLogprob(token=vocab[t], logprob=lp, bytes=list(vocab[t].encode())) for t, lp in p.score.top]
        content.append(
            ChatTokenLogprob(token=p.token, logprob=p.score.logprob, bytes=list(p.token.encode()), top_logprobs=top)
        )
    return ChatLogprobs(content=content)
