"""The request rules the engine enforces, shared by every caller (HTTP routes, CLI, training's sampler).

A prompt must be encodable (every character in the vocabulary; a `lines` model's boundary mark never
inside it), and a sequence generates at most MAX_NEW_TOKENS_CAP tokens, with a default budget by data
format when the caller sets none. The HTTP side checks the same functions first, to name the field.
"""

from __future__ import annotations

from contract import Manifest

MAX_NEW_TOKENS_CAP = 2048
LINES_DEFAULT_MAX_NEW = 64  # lines models stop at their end marker, at most this
STREAM_DEFAULT_MAX_NEW = 256


def default_max_new_tokens(manifest: Manifest) -> int:
    """The token budget of a sequence that did not ask for one (the engine applies the same rule)."""
    return LINES_DEFAULT_MAX_NEW if manifest.format == "lines" else STREAM_DEFAULT_MAX_NEW


def offending_chars(manifest: Manifest, prompt: str) -> tuple[tuple[str, ...], str | None]:
    """The prompt's characters outside the vocabulary (in order of appearance), and the line boundary
    mark if the prompt contains it (a `lines` model's end marker cannot stand inside a prompt)."""
    vocab = set(manifest.vocab)
    outside = tuple(dict.fromkeys(ch for ch in prompt if ch not in vocab))
    mark = manifest.vocab[manifest.boundary_token] if manifest.boundary_token is not None else None
    return outside, mark if mark is not None and mark in prompt else None


def vocabulary_problem(manifest: Manifest, text: str, what: str = "prompt") -> str | None:
    """`what` has characters outside the model's vocabulary (each named once, in order), or None."""
    outside, _ = offending_chars(manifest, text)
    if not outside:
        return None
    return f"{what} has characters outside {manifest.name}'s vocabulary: {', '.join(repr(ch) for ch in outside)}"


def prompt_problem(manifest: Manifest, prompt: str) -> str | None:
    """Why `manifest`'s model cannot take `prompt` (every offending character named), or None."""
    problems = [vocabulary_problem(manifest, prompt)]
    _, mark = offending_chars(manifest, prompt)
    if mark is not None:
        problems.append(f"prompt contains {mark!r}, {manifest.name}'s line boundary, which ends a sequence")
    return "; ".join(p for p in problems if p) or None
