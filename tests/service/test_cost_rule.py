"""One cost rule for every generation route, checked on the parsed request whatever the fields' order:
prompts x n (x best_of) at most MAX_CHOICES, and at most MAX_REQUEST_TOKENS tokens asked for in all.

In-process over the fake engine (tests/service/test_gateway.py's harness): a refused request never reaches a worker.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from service.protocol import MAX_CHOICES, MAX_REQUEST_TOKENS
from tests.support.fake_engine import run

ROUTES = {
    "generate": ("/v1/generate", "max_new_tokens", {"prompt": "a"}),
    "completions": ("/v1/completions", "max_tokens", {"prompt": "a"}),
    "chat": ("/v1/chat/completions", "max_tokens", {"messages": [{"role": "user", "content": "a"}]}),
}


def post(route: str, body: dict[str, Any]) -> tuple[httpx.Response, int]:
    """The response, and how many requests reached the engine client."""

    async def scenario(http: httpx.AsyncClient) -> tuple[httpx.Response, int]:
        r = await http.post(ROUTES[route][0], json=body)
        return r, len(http.engine_client.queues)  # type: ignore[attr-defined]

    return run(scenario)


def error(r: httpx.Response) -> dict[str, Any]:
    assert r.status_code == 400, r.text
    return r.json()["error"]


@pytest.mark.parametrize("n_first", [True, False], ids=["n-before-prompt", "n-after-prompt"])
def test_prompts_times_n_is_capped_whatever_the_field_order(n_first: bool) -> None:
    prompts = ["a"] * MAX_CHOICES
    body = {"model": "names", "n": MAX_CHOICES, "prompt": prompts, "max_tokens": 1}
    if not n_first:
        body = {"model": "names", "prompt": prompts, "max_tokens": 1, "n": MAX_CHOICES}
    r, reached = post("completions", body)
    err = error(r)
    assert err["code"] == "too_many_choices" and err["param"] == "n"
    assert f"{MAX_CHOICES} x {MAX_CHOICES}" in err["message"]
    assert reached == 0


def test_prompts_times_best_of_is_capped() -> None:
    r, reached = post("completions", {"model": "names", "prompt": ["a", "b"], "best_of": 40, "max_tokens": 1})
    err = error(r)
    assert (err["code"], err["param"]) == ("too_many_choices", "best_of") and reached == 0


@pytest.mark.parametrize("route", sorted(ROUTES))
def test_total_tokens_are_capped_on_every_route(route: str) -> None:
    path, budget, prompt = ROUTES[route]
    n = MAX_CHOICES
    per = MAX_REQUEST_TOKENS // n + 1
    r, reached = post(route, {"model": "names", "n": n, budget: per, **prompt})
    err = error(r)
    assert (err["code"], err["param"]) == ("too_many_tokens", budget), path
    assert str(MAX_REQUEST_TOKENS) in err["message"] and reached == 0


@pytest.mark.parametrize("route", sorted(ROUTES))
def test_a_request_at_the_cap_is_served(route: str) -> None:
    _, budget, prompt = ROUTES[route]
    r, reached = post(route, {"model": "names", "n": MAX_CHOICES, budget: 2, **prompt})
    assert r.status_code == 200, r.text
    assert len(r.json()["choices"]) == MAX_CHOICES and reached == 1


def test_too_many_prompts_are_named_as_such() -> None:
    r, _ = post("completions", {"model": "names", "prompt": ["a"] * 1000})
    assert f"at most {MAX_CHOICES} prompts, got 1000" in error(r)["message"]
