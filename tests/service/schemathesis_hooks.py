"""schemathesis hooks for tests/service/test_contracts.py (loaded with SCHEMATHESIS_HOOKS).

The OpenAPI document states every rule a JSON schema can hold; the generation routes' cross-field
rules (prompts x n, tokens asked for in all, best_of >= n) it states in words and numbers
(`x-charlm-limits`, each generation route's 400). Here they are checked again, from the document's
numbers, so that schemathesis' positive cases are the requests the document calls valid: a schema-valid
body that breaks them is one the document says gets 400, and is not generated as positive data.
Negative cases are left alone.
"""

from __future__ import annotations

from typing import Any

import schemathesis

ROUTES = ("/v1/generate", "/v1/completions", "/v1/chat/completions")


def _prompts(path: str, body: dict[str, Any]) -> int:
    prompt = body.get("prompt")
    if not path.endswith("/v1/completions") or not isinstance(prompt, list):
        return 1
    return 1 if all(isinstance(x, int) for x in prompt) else len(prompt)


def breaks_the_rules(path: str, body: Any, limits: dict[str, Any]) -> bool:
    """True when `body`, valid by the schema, breaks a rule the document states in words."""
    if not path.endswith(ROUTES) or not isinstance(body, dict):
        return False
    default = limits["default_max_tokens"].get(body.get("model"))
    if default is None:
        return False
    n, best_of = body.get("n") or 1, body.get("best_of")
    if best_of is not None and (best_of < n or (best_of > n and body.get("stream"))):
        return True
    if path.endswith("/v1/generate"):
        budget = body.get("max_new_tokens")
    else:
        budget = body.get("max_completion_tokens")
        budget = body.get("max_tokens") if budget is None else budget
    prompts, samples = _prompts(path, body), max(n, best_of or 0)
    tokens = prompts * samples * max(1, default if budget is None else budget)
    return prompts * samples > limits["max_choices"] or tokens > limits["max_request_tokens"]


@schemathesis.hook
def filter_case(context: Any, case: Any) -> bool:
    meta = case.meta
    if meta is None or not meta.generation.mode.is_positive:
        return True
    limits = context.operation.schema.raw_schema.get("x-charlm-limits")
    return limits is None or not breaks_the_rules(context.operation.path, case.body, limits)
