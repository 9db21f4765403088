"""Decode parity, run at every export after the logits checks: the same requests decoded through the
service's engine over the eager net (TorchEagerBackend, as `training sample` and the model card do) and
over each exported file (the backends the server loads) must give identical texts.

The logits checks (parity.py) are the stronger test of numerics; this one proves that what the card
shows is what the server will produce, through one decoder: greedy and temperature-1 seeded samples,
top-k/top-p, a prompt, a stop string (stream models, taken from the eager text so that it fires), whole
samples on `lines` models, and for a GPT block_size + 8 new tokens, so each sequence slides past the
position table once. All requests of one backend decode in one batch, so it costs about three decodes.
A miss raises ParityError, one line naming the backend, the request and the first differing position.

Numerics differ by ~1e-6 between torch and ONNX Runtime, so a seeded draw whose uniform lands that close
to a boundary of the cumulative distribution (or a greedy near-tie) may pick another token on each side:
a rare event that is no defect. Every request asks for the raw logprobs of the whole vocabulary, and a
text that departs where both sides gave the same distribution (within TIE_TOLERANCE) is accepted up to
there; anything else fails.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from torch import nn

from contract import DECODE_FILE, family
from engine import Completion, Engine, EngineError, Generator, SamplingParams, TokenLogprob, load_backend
from training.export.errors import ParityError
from training.export.manifest import file_entry
from training.export.samples import LINE_MAX_CHARS
from training.sample import eager_generator

SEEDS = (1, 2, 3, 4)
WINDOW_STREAM_CHARS = 64  # a window net slides from its first token: no need to go past block_size
GPT_PAST_BLOCK = 8  # new tokens past block_size, so a GPT slides (re-prefills) once
STOP_AT = 12  # the stop string is the eager text's characters here (it may occur earlier too)
TIE_TOLERANCE = 1e-4  # max |logprob difference| at a departure that a near-tie explains (parity.py's order)


@dataclass(frozen=True)
class Request:
    prompt: str
    params: SamplingParams

    def __str__(self) -> str:
        p = self.params
        what = ["greedy"] if p.greedy else [f"seed {p.seed}", f"temperature {p.temperature:g}"]
        what += [f"top_k {p.top_k}"] if p.top_k is not None else []
        what += [f"top_p {p.top_p:g}"] if p.top_p != 1 else []
        what += [f"stop {list(p.stop)}"] if p.stop else []
        what += ["ignore_eos"] if p.ignore_eos else []
        return f"prompt {self.prompt!r}, {', '.join(what)}, max_new_tokens {p.max_new_tokens}"


def check_decode_parity(
    net: nn.Module, arch: str, vocab: Sequence[str], boundary_token: int | None, files: Mapping[str, Path]
) -> None:
    """Raise ParityError unless every exported file ({format: path}) decodes as the eager net does."""
    requests = [
        replace(r, params=replace(r.params, logprobs=len(vocab)))
        for r in decode_requests(arch, vocab, boundary_token, net.cfg.block_size)
    ]
    eager = eager_generator(net, arch, vocab, boundary_token, slots=len(requests) + 1)
    want = _decode(eager, requests)
    if boundary_token is None:  # a stop string cut out of the eager text: it fires, here and in the export
        stop = _stop_request(requests[1], want[1].text)
        if stop is not None:
            requests, want = [*requests, stop], [*want, *_decode(eager, [stop])]
    for fmt, path in files.items():
        spec = eager.manifest
        decode = path.with_name(DECODE_FILE)
        if fmt == "onnx" and decode.is_file():  # a GPT's decode graph: the engine decodes through it
            spec = spec.model_copy(update={"onnx_decode": file_entry(decode)})
        try:
            graph = Generator(Engine.from_backend(spec, load_backend(path, spec, fmt, "cpu"), slots=len(requests)))
            done = _decode(graph, requests)
        except EngineError as exc:  # one line, as every export failure is
            raise ParityError(f"{fmt} decode parity failed: the engine cannot run it: {exc}") from None
        for request, got, ref in zip(requests, done, want, strict=True):
            miss = _first_difference(got, ref)
            if miss is not None:
                raise ParityError(f"{fmt} decode parity failed ({request}): {miss}")


def decode_requests(arch: str, vocab: Sequence[str], boundary_token: int | None, block_size: int) -> list[Request]:
    """Greedy and seeded samples, with and without a prompt, one with top-k and top-p; whole samples on
    `lines` models (plus, for a GPT, one that ignores the boundary long enough to slide)."""
    gpt_new = block_size + GPT_PAST_BLOCK
    if boundary_token is not None:
        new = max(LINE_MAX_CHARS, gpt_new) if family(arch).kv_cache else LINE_MAX_CHARS
    else:
        new = gpt_new if family(arch).kv_cache else WINDOW_STREAM_CHARS
    prompt = _prompt(vocab, boundary_token)
    s1, s2, s3, s4 = SEEDS
    requests = [
        Request("", SamplingParams(temperature=0.0, max_new_tokens=new)),
        Request("", SamplingParams(temperature=1.0, seed=s1, max_new_tokens=new)),
        Request("", SamplingParams(temperature=1.0, seed=s2, max_new_tokens=new)),
        Request(prompt, SamplingParams(temperature=0.0, max_new_tokens=new)),
        Request(prompt, SamplingParams(temperature=1.0, seed=s3, max_new_tokens=new)),
        Request("", SamplingParams(temperature=0.8, top_k=5, top_p=0.9, seed=s4, max_new_tokens=new)),
    ]
    if boundary_token is not None and family(arch).kv_cache:
        requests.append(Request("", SamplingParams(temperature=1.0, seed=s1, max_new_tokens=gpt_new, ignore_eos=True)))
    return requests


def _decode(gen: Generator, requests: Sequence[Request]) -> list[Completion]:
    return gen.generate([r.prompt for r in requests], [r.params for r in requests])


def _prompt(vocab: Sequence[str], boundary_token: int | None) -> str:
    """Three characters the model can take, letters when it has them."""
    usable = [ch for i, ch in enumerate(vocab) if i != boundary_token]
    letters = [ch for ch in usable if ch.isalpha()]
    return "".join((letters if len(letters) >= 3 else usable)[:3])


def _stop_request(base: Request, text: str) -> Request | None:
    """`base` again, stopped by two characters of its eager text, early on: the eager net decodes it
    alone, so a short run is cheap (None: text too short)."""
    if len(text) < STOP_AT + 2:
        return None
    return replace(base, params=replace(base.params, stop=(text[STOP_AT : STOP_AT + 2],)))


def _first_difference(got: Completion, want: Completion) -> str | None:
    """Where the export's completion first departs from the eager net's (None: identical, or departs at a
    near-tie: the same distribution on both sides there)."""
    if got.text != want.text:
        pairs = enumerate(zip(got.text, want.text, strict=False))
        i = next((i for i, (a, b) in pairs if a != b), min(len(got.text), len(want.text)))
        gap = _distribution_gap(got.logprobs, want.logprobs, i)
        if gap is not None and gap <= TIE_TOLERANCE:
            return None
        ours = repr(got.text[i]) if i < len(got.text) else "the end"
        theirs = repr(want.text[i]) if i < len(want.text) else "the end"
        where = f" (max logprob difference there {gap:.2e})" if gap is not None else ""
        return f"text differs from the eager net's at character {i}{where}: {ours} vs eager {theirs}"
    if (got.finish_reason, got.completion_tokens) != (want.finish_reason, want.completion_tokens):
        return (
            f"same text, but finish_reason {got.finish_reason!r} after {got.completion_tokens} tokens "
            f"vs eager {want.finish_reason!r} after {want.completion_tokens}"
        )
    return None


def _distribution_gap(ours: Sequence[TokenLogprob], theirs: Sequence[TokenLogprob], i: int) -> float | None:
    """Largest |logprob difference| over the vocabulary at generated token i (None: not reported)."""
    if i >= len(ours) or i >= len(theirs) or not ours[i].top or not theirs[i].top:
        return None
    a, b = dict(ours[i].top), dict(theirs[i].top)
    return max(abs(a[t] - b.get(t, float("-inf"))) for t in a)
