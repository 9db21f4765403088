"""What the generation routes' request bodies share, as pydantic models (they also make the OpenAPI docs).

Requests are strict (no "1" for 1). The native route refuses unknown fields (a typo is a 400 naming
the field); the OpenAI routes accept them, as vLLM does, and the gateway logs the ones it does not
know (see IGNORED for the fields documented as accepted and ignored). What needs the model (token ids,
logprobs against the vocabulary, logit_bias ids, prompt characters) is checked in service.http.prompts;
each route's own body is in its family's module (generate, completions, chat).
"""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema, field_validator
from pydantic_core import PydanticCustomError

from engine import MAX_NEW_TOKENS_CAP, SamplingParams
from service.protocol import MAX_ATTEMPTS, MAX_CHOICES, MAX_STOP

SEED_MIN, SEED_MAX = -(2**63), 2**64 - 1
StopString = Annotated[str, Field(min_length=1, max_length=256)]
# OpenAI's `stop`: one string or a list of them. A string is taken as a list of one before validation (so an
# error names the real problem), and the schema documents both forms.
_STOP_ITEM = {"type": "string", "minLength": 1, "maxLength": 256}
_STOP_SCHEMA = {"anyOf": [_STOP_ITEM, {"type": "array", "items": _STOP_ITEM, "maxItems": MAX_STOP}, {"type": "null"}]}
Stop = Annotated[list[StopString] | None, Field(max_length=MAX_STOP), WithJsonSchema(_STOP_SCHEMA)]
Bias = Annotated[float, Field(ge=-100, le=100, allow_inf_nan=False)]


def _integral(value: object) -> object:
    """JSON's integers include 3.0 (JSON Schema says so; some clients write every number as a float)."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


# An integer field: strict (no "3", no true), but 3.0 is 3. OptInt wraps the union, so that a field's
# bounds stay on its integer in the JSON schema.
Int = Annotated[int, BeforeValidator(_integral)]
OptInt = Annotated[int | None, BeforeValidator(_integral)]

# Fields of OpenAI's requests that cannot change the output: accepted and ignored without a log line.
IGNORED = frozenset({"user", "metadata", "service_tier", "store", "parallel_tool_calls", "prediction", "modalities"})

_STRICT = ConfigDict(extra="forbid", strict=True)
_OPENAI = ConfigDict(extra="allow", strict=True)

TEXT_CHOICE = (
    "/v1/generate returns the whole sample in `text`: the prompt followed by what the model generated "
    '(names-gpt with prompt "ka" gives e.g. "kaylee"); `usage.completion_tokens` counts only the '
    "generated part. When streaming, each choice's first event carries the prompt. /v1/completions "
    "returns only the generated text, as OpenAI does, unless `echo` is true."
)


NOVEL_ONLY = (
    "extension, `lines` models with data hashes: a whole sample found in the training data is sampled again "
    f"(at most {MAX_ATTEMPTS} attempts per choice; a stream sends each choice in one piece once it is whole)"
)


def _one_or_many(value: object) -> object:
    """OpenAI accepts `stop` as one string or a list of them."""
    return [value] if isinstance(value, str) else value


def _unsupported(field: str, hint: str) -> PydanticCustomError:
    return PydanticCustomError("unsupported", f"{field} is not supported by charlm; {hint}")


class Sampling(BaseModel):
    """The sampling fields every generation route shares (OpenAI's ranges; extensions as in vLLM)."""

    temperature: float | None = Field(1.0, ge=0, allow_inf_nan=False, description="0 = greedy (argmax)")
    top_k: OptInt = Field(None, ge=1, description="sample among the k most likely characters (extension)")
    top_p: float | None = Field(1.0, gt=0, le=1, allow_inf_nan=False, description="nucleus sampling mass")
    seed: OptInt = Field(None, ge=SEED_MIN, le=SEED_MAX, description="same seed, same text (alone or batched)")
    stop: Stop = Field(None, description=f"a string or up to {MAX_STOP} strings that end a sample (left out)")
    min_tokens: OptInt = Field(0, ge=0, le=MAX_NEW_TOKENS_CAP, description="no end before this many tokens")
    ignore_eos: bool | None = Field(False, description="a `lines` model writes its end marker and goes on")
    repetition_penalty: float | None = Field(1.0, gt=0, le=2, allow_inf_nan=False, description="vLLM's; 1 = off")
    presence_penalty: float | None = Field(0.0, ge=-2, le=2, allow_inf_nan=False)
    frequency_penalty: float | None = Field(0.0, ge=-2, le=2, allow_inf_nan=False)
    logit_bias: dict[str, Bias] | None = Field(None, description="token id (as a string) -> bias in [-100, 100]")

    _stop = field_validator("stop", mode="before")(lambda cls, v: _one_or_many(v))

    def sampling_params(self, **fields: Any) -> SamplingParams:
        """The engine's SamplingParams, the one place request fields become it (HTTP routes and the CLI).

        Every field shared with SamplingParams by name is copied (None leaves the engine's default), so
        a new sampling option is a field here and in SamplingParams, nothing more; `fields` are what the
        route decides (budget, logprobs, stops it adds, logit_bias resolved against the vocabulary).
        """
        shared = {name: getattr(self, name) for name in _SHARED if getattr(self, name) is not None}
        return SamplingParams(**(shared | fields))


_SHARED = tuple(f.name for f in dataclasses.fields(SamplingParams) if f.name in Sampling.model_fields)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    include_usage: bool | None = Field(None, description="a last chunk with `choices: []` and the usage")
    continuous_usage_stats: bool | None = Field(None, description="usage so far on every chunk (vLLM)")


TokenIds = Annotated[list[Int], Field(min_length=1)]
PromptList = Annotated[list[str], Field(min_length=1, max_length=MAX_CHOICES)]
IdsList = Annotated[list[TokenIds], Field(min_length=1, max_length=MAX_CHOICES)]


class OpenAIFields(Sampling):
    """What /v1/completions and /v1/chat/completions share."""

    model_config = _OPENAI

    model: str = Field(min_length=1)
    max_tokens: OptInt = Field(None, ge=0, le=MAX_NEW_TOKENS_CAP, description="default as max_new_tokens")
    max_completion_tokens: OptInt = Field(None, ge=0, le=MAX_NEW_TOKENS_CAP, description="wins over max_tokens")
    n: OptInt = Field(1, ge=1, le=MAX_CHOICES)
    stream: bool | None = False
    stream_options: StreamOptions | None = None

    @property
    def budget(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    def unknown_fields(self) -> list[str]:
        """Fields sent that this route does not know and that are not in IGNORED (the gateway logs them)."""
        return sorted(set(self.model_extra or {}) - IGNORED)
