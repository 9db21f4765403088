"""Tokenizer routes as vLLM serves them, for clients that count or send token ids (lm-evaluation-
harness's remote tokenizer probes `GET /tokenizer_info`, then `POST /tokenize` and `/detokenize`).

A token is one character of the model's vocabulary; its id is the character's index. The routes exist
at the top level (with `model` in the body or query; it may be left out when one model is served) and
under `/models/{model}`, next to `/models/{model}/v1/completions`, so that one base URL names both.
`/tokenize` encodes raw text: a `lines` model's boundary mark is its own token there (its eos/bos).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Body
from pydantic import BaseModel, ConfigDict, Field

from contract import Manifest
from engine import vocabulary_problem
from service.errors import APIError
from service.http.catalog import Catalog
from service.http.prompts import decode_ids
from service.http.sampling import Int

# Bounds that keep any body the schema allows under the 64 KiB limit (a newline is 2 bytes in JSON, an id
# up to 5 with its separator), so the limit's 413 never answers a valid request.
MAX_TEXT, MAX_IDS = 32000, 12000


class TokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    model: str | None = Field(None, description="may be left out when one model is served")
    prompt: str = Field(max_length=MAX_TEXT, description=f"at most {MAX_TEXT} characters (a body fits in 64 KiB)")
    add_special_tokens: bool | None = Field(None, description="accepted; character models add none")


class DetokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    model: str | None = None
    tokens: list[Int] = Field(max_length=MAX_IDS, description=f"at most {MAX_IDS} ids (a body fits in 64 KiB)")


def _pick(catalog: Catalog, model: str | None) -> Manifest:
    if model is not None:
        return catalog.resolve(model)
    if len(catalog.models) == 1:
        return next(iter(catalog.models.values()))
    available = ", ".join(sorted(catalog.models))
    raise APIError(
        400,
        f"'model' is required when several models are served ({available}); or use /models/MODEL/...",
        param="model",
        code="missing_required_parameter",
    )


def encode(manifest: Manifest, text: str) -> list[int]:
    problem = vocabulary_problem(manifest, text)
    if problem:
        raise APIError(400, problem, param="prompt", code="invalid_prompt")
    stoi = {ch: i for i, ch in enumerate(manifest.vocab)}
    return [stoi[ch] for ch in text]


def info(name: str, m: Manifest) -> dict:
    """What vLLM's /tokenizer_info returns, for a character vocabulary."""
    mark = m.vocab[m.boundary_token] if m.boundary_token is not None else None
    # A stream model has no end token; a newline is what it reads before a text (the engine's start).
    start = mark if mark is not None else ("\n" if "\n" in m.vocab else None)
    return {
        "model": name,
        "tokenizer_class": "CharacterTokenizer",
        "vocab_size": len(m.vocab),
        "vocab": list(m.vocab),
        "format": m.format,
        "eos_token": mark,
        "bos_token": start,
        "pad_token": start,
        "unk_token": None,
        "model_max_length": m.block_size,
        "add_bos_token": False,
        "chat_template": None,
    }


class Tokenizer:
    """The tokenizer routes' handlers over the served models (registered by service.http.routes)."""

    def __init__(self, catalog: Catalog):
        self.catalog = catalog

    async def tokenize(self, body: Annotated[TokenizeRequest, Body()]) -> dict:
        return self._tokenize(_pick(self.catalog, body.model), body)

    async def model_tokenize(self, model_id: str, body: Annotated[TokenizeRequest, Body()]) -> dict:
        return self._tokenize(self.catalog.resolve(model_id), body)  # the path names the model

    async def detokenize(self, body: Annotated[DetokenizeRequest, Body()]) -> dict:
        return {"prompt": decode_ids(_pick(self.catalog, body.model), body.tokens, "tokens")}

    async def model_detokenize(self, model_id: str, body: Annotated[DetokenizeRequest, Body()]) -> dict:
        return {"prompt": decode_ids(self.catalog.resolve(model_id), body.tokens, "tokens")}

    @staticmethod
    def _tokenize(m: Manifest, body: TokenizeRequest) -> dict:
        tokens = encode(m, body.prompt)
        return {"count": len(tokens), "max_model_len": m.block_size, "tokens": tokens, "token_strs": list(body.prompt)}

    async def info(self, model: str | None = None) -> dict:
        m = _pick(self.catalog, model)
        return info(m.name if model is None else model, m)

    async def model_info(self, model_id: str) -> dict:
        return await self.info(model_id)
