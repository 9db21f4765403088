"""The request schemas of the OpenAPI document, one per served model: what a JSON schema can say about
what each model takes.

A request is checked against the model it names: its prompt's characters against the vocabulary (a
`lines` model's boundary mark cannot stand inside a prompt), token ids against the vocabulary's size,
`logprobs` up to it. So each generation and tokenizer body is a `oneOf` of one variant per served model,
told apart by `model` (its `const`), and the per-model routes are listed once per model
(`/models/names-gpt/tokenize`, ...) with that model's variant. The server still answers an unknown
model with 404 and reads `model` as a plain string, as OpenAI does; the document only says which
values can succeed.

What no JSON schema can say, the cost rule (prompts x n and prompts x best_of at most 64, tokens asked
for in all at most --max-request-tokens) and best_of >= n, is stated in each route's 400 response and
in `x-charlm-limits` (the numbers, and each model's default budget), so a client or a test can check it.
"""

from __future__ import annotations

import copy
import re
from typing import Any

from contract import Manifest
from engine import default_max_new_tokens
from service.protocol import MAX_CHOICES

GENERATION_BODIES = frozenset({"GenerateRequest", "CompletionRequest", "ChatRequest"})
TOKENIZER_BODIES = frozenset({"TokenizeRequest", "DetokenizeRequest"})
PER_MODEL = "/models/{model_id}"
ROLES = ("system", "developer", "user", "assistant", "tool")
COST_RULE = (
    "Rules a schema cannot state (a 400 names the field): prompts x n and prompts x best_of at most {choices}; "
    "prompts x max(n, best_of) x max(1, the token budget) at most {tokens} (--max-request-tokens; the budget "
    "left out is the model's default, `x-charlm-limits`); best_of >= n, and best_of > n is not streamed."
)


def char_class(chars: str) -> str:
    """A regex character class of exactly `chars` (each escaped as \\uXXXX unless a letter or digit)."""
    return "[" + "".join(c if c.isascii() and c.isalnum() else f"\\u{ord(c):04x}" for c in sorted(set(chars))) + "]"


def text_pattern(m: Manifest, raw: bool = False) -> str:
    """What a prompt may hold: the vocabulary, less a `lines` model's boundary mark unless `raw`."""
    mark = m.vocab[m.boundary_token] if m.boundary_token is not None and not raw else None
    return "^" + char_class("".join(c for c in m.vocab if c != mark)) + "*$"


def name_pattern(m: Manifest) -> str:
    """A chat `name` whose upper-case form is in the vocabulary (it becomes the speaker's line)."""
    candidates = set(m.vocab) | {c.lower() for c in m.vocab}
    return "^" + char_class("".join(c for c in candidates if set(c.upper()) <= set(m.vocab))) + "+$"


def _ids(m: Manifest, lead_mark: bool) -> dict[str, Any]:
    """Token ids of the vocabulary; with `lead_mark`, a `lines` model's boundary only in the first place."""
    size, mark = len(m.vocab), m.boundary_token
    any_id = {"type": "integer", "minimum": 0, "maximum": size - 1}
    if not lead_mark or mark is None:
        return {"type": "array", "items": any_id}
    inner = {"type": "integer", "minimum": 1, "maximum": size - 1} if mark == 0 else {**any_id, "not": {"const": mark}}
    return {"type": "array", "prefixItems": [any_id], "items": inner}


def _walk(node: Any, visit: Any) -> None:
    if isinstance(node, dict):
        visit(node)
        for child in node.values():
            _walk(child, visit)
    elif isinstance(node, list):
        for child in node:
            _walk(child, visit)


def _texts(schema: dict[str, Any], pattern: str) -> None:
    """Every string in `schema` (a prompt, texts or content) gets `pattern`."""
    _walk(schema, lambda n: n.get("type") == "string" and "const" not in n and n.setdefault("pattern", pattern))


def _prompt(schema: dict[str, Any], m: Manifest) -> None:
    """A completions prompt: texts in the vocabulary, id lists within it (a leading boundary allowed)."""
    for branch in schema.get("anyOf", [schema]):
        if branch.get("type") == "string":
            branch["pattern"] = text_pattern(m)
        elif branch.get("items", {}).get("type") == "string":
            branch["items"]["pattern"] = text_pattern(m)
        elif branch.get("items", {}).get("type") == "integer":
            branch.update({k: v for k, v in _ids(m, True).items() if k != "type"})
        elif branch.get("items", {}).get("type") == "array":
            branch["items"].update({k: v for k, v in _ids(m, True).items() if k != "type"})


def _at_most_vocab(prop: dict[str, Any], m: Manifest) -> None:
    _walk(prop, lambda n: n.get("type") == "integer" and n.__setitem__("maximum", len(m.vocab)))


def _logit_bias(prop: dict[str, Any], m: Manifest) -> None:
    ids = "|".join(str(i) for i in range(len(m.vocab)))
    _walk(prop, lambda n: n.get("type") == "object" and n.__setitem__("propertyNames", {"pattern": f"^({ids})$"}))


def _message(components: dict[str, Any], m: Manifest) -> dict[str, Any]:
    """Chat messages: a `stream` model reads every message (its speaker line too), a `lines` model the
    text of its user messages (the last one is the prompt)."""
    message = copy.deepcopy(components["Message"])
    part = copy.deepcopy(components["TextPart"])
    props = message["properties"]
    for branch in props["content"]["anyOf"]:
        if branch.get("type") == "array":
            branch["items"] = part
    if m.format == "lines":
        user = copy.deepcopy(message)
        _texts(user["properties"]["content"], text_pattern(m))
        user["properties"]["role"] = {"type": "string", "const": "user"}
        others = copy.deepcopy(message)
        others["properties"]["role"] = {"type": "string", "enum": [r for r in ROLES if r != "user"]}
        return {"oneOf": [user, others]}
    _texts(props["content"], text_pattern(m))
    props["role"]["enum"] = [r for r in ROLES if set(r.upper()) <= set(m.vocab)]
    _walk(props["name"], lambda n: n.get("type") == "string" and n.__setitem__("pattern", name_pattern(m)))
    return message


def variant(components: dict[str, Any], body: str, m: Manifest, model: str = "required") -> dict[str, Any]:
    """`body`'s schema for one model. `model`: "required" (its name), "optional" (its name or left out,
    when one model is served) or "ignored" (the route's path names the model)."""
    schema = copy.deepcopy(components[body])
    props = schema["properties"]
    name = {"type": "string", "const": m.name}
    if model == "required":
        props["model"] = name
        schema["required"] = sorted({*schema.get("required", []), "model"})
    elif model == "optional":
        props["model"] = {"anyOf": [name, {"type": "null"}]}
    else:
        props["model"] = {"anyOf": [{"type": "string"}, {"type": "null"}], "description": "ignored: see the path"}
    if body == "GenerateRequest":
        props["prompt"]["pattern"] = text_pattern(m)
    elif body == "CompletionRequest":
        _prompt(props["prompt"], m)
    elif body == "ChatRequest":
        props["messages"]["items"] = _message(components, m)
    elif body == "TokenizeRequest":
        props["prompt"]["pattern"] = text_pattern(m, raw=True)
    elif body == "DetokenizeRequest":
        props["tokens"].update({k: v for k, v in _ids(m, False).items() if k != "type"})
    for field in ("logprobs", "top_logprobs"):  # integers only: chat's `logprobs` is a boolean
        if field in props:
            _at_most_vocab(props[field], m)
    if "logit_bias" in props:
        _logit_bias(props["logit_bias"], m)
    if body == "ChatRequest":  # not a field of chat's, but refused when true: say so
        props["novel_only"] = {"anyOf": [{"type": "boolean", "const": False}, {"type": "null"}]}
    elif "novel_only" in props and (m.format != "lines" or m.data_hashes is None):  # nothing to compare with
        _walk(props["novel_only"], lambda n: n.get("type") == "boolean" and n.__setitem__("const", False))
    schema["title"] = f"{schema.get('title', body)} ({m.name})"
    return schema


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def per_model(doc: dict[str, Any], models: dict[str, Manifest], max_request_tokens: int) -> None:
    """Specialise `doc` (FastAPI's, in place) for the served models; see the module's docstring."""
    components = doc["components"]["schemas"]
    names = sorted(models)
    for body in GENERATION_BODIES | TOKENIZER_BODIES:
        for name in names:
            model = "optional" if body in TOKENIZER_BODIES and len(names) == 1 else "required"
            components[f"{body}.{name}"] = variant(components, body, models[name], model)
            if body in TOKENIZER_BODIES:
                components[f"{body}.{name}.path"] = variant(components, body, models[name], "ignored")
    paths: dict[str, Any] = {}
    for path, operations in doc["paths"].items():
        if path.startswith(PER_MODEL):
            for name in names:  # x-charlm-template: the route as registered (the README's route list)
                paths[path.replace("{model_id}", name)] = {**_one_model(operations, name), "x-charlm-template": path}
            continue
        paths[path] = operations
        for op in operations.values():
            _bodies(op, names)
            for param in op.get("parameters", []):
                if param["name"] in ("model", "model_id"):
                    param["schema"] = {"type": "string", "enum": names}
                    param["required"] = param["in"] == "path" or len(names) > 1
    doc["paths"] = paths
    doc["x-charlm-limits"] = {
        "max_choices": MAX_CHOICES,
        "max_request_tokens": max_request_tokens,
        "default_max_tokens": {name: default_max_new_tokens(models[name]) for name in names},
    }
    for body in GENERATION_BODIES | TOKENIZER_BODIES:
        components.pop(body, None)
    for shared in ("Message", "TextPart"):
        components.pop(shared, None)


def _bodies(op: dict[str, Any], names: list[str], only: str | None = None) -> None:
    content = op.get("requestBody", {}).get("content", {}).get("application/json", {})
    ref = content.get("schema", {}).get("$ref", "")
    body = ref.rpartition("/")[2]
    if body not in GENERATION_BODIES | TOKENIZER_BODIES:
        return
    if body in GENERATION_BODIES and "400" in op.get("responses", {}):
        limits = COST_RULE.format(choices=MAX_CHOICES, tokens="`x-charlm-limits.max_request_tokens`")
        op["responses"]["400"]["description"] += ". " + limits
    if only is not None:
        content["schema"] = _ref(f"{body}.{only}.path" if body in TOKENIZER_BODIES else f"{body}.{only}")
        return
    variants = [_ref(f"{body}.{name}") for name in names]
    content["schema"] = {"oneOf": variants} if len(variants) > 1 else variants[0]


def _one_model(operations: dict[str, Any], name: str) -> dict[str, Any]:
    """A /models/{model_id}/... route for one model: no path parameter, that model's body."""
    out = copy.deepcopy(operations)
    for op in out.values():
        op["parameters"] = [p for p in op.get("parameters", []) if p["name"] != "model_id"] or None
        if op["parameters"] is None:
            del op["parameters"]
        op["operationId"] = f"{op.get('operationId', 'op')}_{re.sub(r'[^A-Za-z0-9_]', '_', name)}"
        _bodies(op, [name], only=name)
    return out
