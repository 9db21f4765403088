"""From a validated request body to an EngineRequest: the checks that need the model's vocabulary.

Token-id prompts become text (a token is a character); a `lines` model's token-id prompt may start
with its boundary mark (what lm-evaluation-harness sends as the prefix token), which stands for the
start of a sample the model sees anyway: it is dropped and reported back as a token without a
logprob. Everything refused here is a 400 naming the field.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from contract import Manifest
from engine import SamplingParams, prompt_problem
from service.errors import APIError
from service.http.sampling import Sampling
from service.protocol import MAX_CHOICES, MAX_REQUEST_TOKENS, EngineRequest

TOKEN_KEY = re.compile(r"0|[1-9][0-9]*", re.ASCII)


@dataclass(frozen=True)
class Prepared:
    """The request for the workers, and what only the HTTP side needs to answer it."""

    req: EngineRequest
    lead: tuple[bool, ...]  # per prompt: a dropped leading boundary token, echoed as a token
    echo: bool


def decode_ids(manifest: Manifest, ids: list[int], param: str) -> str:
    """Token ids -> text; 400 naming `param` for ids outside the vocabulary."""
    size = len(manifest.vocab)
    bad = [i for i in ids if not 0 <= i < size]
    if bad:
        raise APIError(
            400,
            f"token ids outside {manifest.name}'s vocabulary (0..{size - 1}): {bad[:8]}",
            param=param,
            code="invalid_value",
        )
    return "".join(manifest.vocab[i] for i in ids)


def text_prompts(manifest: Manifest, prompts: list[str | list[int]]) -> tuple[tuple[str, ...], tuple[bool, ...]]:
    """Every prompt as text, checked against the model; which ones had a leading boundary token."""
    texts, lead = [], []
    boundary = manifest.boundary_token
    for p in prompts:
        dropped = False
        if isinstance(p, list):
            if boundary is not None and p and p[0] == boundary:
                p, dropped = p[1:], True
            p = decode_ids(manifest, p, "prompt")
        problem = prompt_problem(manifest, p)
        if problem:
            raise APIError(400, problem, param="prompt", code="invalid_prompt")
        texts.append(p)
        lead.append(dropped)
    return tuple(texts), tuple(lead)


def logit_bias(manifest: Manifest, body: Sampling) -> tuple[tuple[int, float], ...]:
    out = []
    for key, bias in (body.logit_bias or {}).items():
        if not TOKEN_KEY.fullmatch(key):  # a token id as OpenAI's clients write it (no sign, space or 0 lead)
            raise APIError(
                400, f"logit_bias keys must be token ids, got {key!r}", param="logit_bias", code="invalid_value"
            )
        token = int(key)
        if not 0 <= token < len(manifest.vocab):
            raise APIError(
                400,
                f"logit_bias token id {token} is outside {manifest.name}'s vocabulary (0..{len(manifest.vocab) - 1})",
                param="logit_bias",
                code="invalid_value",
            )
        out.append((token, float(bias)))
    return tuple(sorted(out))


def check_logprobs(manifest: Manifest, k: int | None, param: str = "logprobs") -> None:
    if k is not None and k > len(manifest.vocab):
        raise APIError(
            400,
            f"invalid '{param}': at most the vocabulary size, {len(manifest.vocab)} for {manifest.name} (got {k})",
            param=param,
            code="invalid_value",
        )


def check_novel_only(manifest: Manifest) -> None:
    """novel_only needs whole samples (a `lines` model) and the hashes of the data to compare them with."""
    if manifest.format != "lines":
        why = f"{manifest.name} is a `stream` model: it has no whole samples to compare with its data"
    elif manifest.data_hashes is None:
        why = f"{manifest.name} carries no hashes of its training data (data_hashes in its manifest)"
    else:
        return
    raise APIError(400, f"invalid 'novel_only': {why}", param="novel_only", code="invalid_value")


def prepare(
    body: Any, manifest: Manifest, rid: str, deadline: float, *, echo: bool, budget: int | None, best_of: int | None
) -> Prepared:
    """A text route's body (native or completions; chat renders its messages first, service.http.chat)
    as an EngineRequest: prompts checked against the model, then the one SamplingParams."""
    texts, lead = text_prompts(manifest, body.prompts)
    check_logprobs(manifest, body.logprobs)
    if body.novel_only:
        check_novel_only(manifest)
    params = body.sampling_params(
        logit_bias=logit_bias(manifest, body),
        max_new_tokens=budget,
        logprobs=body.logprobs,
        prompt_logprobs=echo and body.logprobs is not None,
    )
    req = engine_request(body, rid, deadline, texts, params, best_of=best_of, novel_only=bool(body.novel_only))
    return Prepared(req, lead, echo)


def engine_request(
    body: Any, rid: str, deadline: float, texts: tuple[str, ...], params: SamplingParams, **extra: Any
) -> EngineRequest:
    """The EngineRequest every route sends: the body's model, n and stream, its prompts as text."""
    return EngineRequest(
        rid=rid,
        model=body.model,
        prompts=texts,
        sampling=params,
        n=body.n or 1,
        stream=bool(body.stream),
        deadline=deadline,
        **extra,
    )


def check_size(req: EngineRequest, manifest: Manifest, budget_param: str, max_tokens: int = MAX_REQUEST_TOKENS) -> None:
    """The one cost rule of every generation route, on the parsed request (whatever its fields' order):
    at most MAX_CHOICES choices and sequences, at most `max_tokens` tokens asked for in all
    (--max-request-tokens: what one request may hold the workers for)."""
    prompts = len(req.prompts)
    if req.choices > MAX_CHOICES:
        raise APIError(
            400,
            f"prompts x n must be at most {MAX_CHOICES}, got {prompts} x {req.n} = {req.choices}",
            param="n",
            code="too_many_choices",
        )
    if req.sequences > MAX_CHOICES:
        raise APIError(
            400,
            f"prompts x best_of must be at most {MAX_CHOICES}, got {prompts} x {req.samples} = {req.sequences}",
            param="best_of",
            code="too_many_choices",
        )
    tokens = req.cost_tokens(manifest)
    if tokens > max_tokens:
        raise APIError(
            400,
            f"the request asks for up to {tokens} tokens ({req.sequences} sequences x {tokens // req.sequences}); "
            f"at most {max_tokens} per request: lower n, best_of or {budget_param}",
            param=budget_param,
            code="too_many_tokens",
        )
