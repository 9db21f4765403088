"""README.md's HTTP examples and route list, checked against the real server, so the page cannot rot.

Each `curl ... localhost:8000/PATH ... -d 'BODY'` example is sent as written, and the `# ` lines under it
must match what comes back: JSON compared as data, "…" standing for a value that changes (ids, timings),
and a stream's lines matched in order against its events. The route list between the `routes` markers
must be the server's own OpenAPI paths; with CHARLM_UPDATE_README=1 this test writes it instead.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

import httpx
import pytest

from tests.support.serving import REPO

README = REPO / "README.md"
ANY = "…"
_CURL = re.compile(
    r"^curl -sN? localhost:8000(?P<path>\S+)[^\n]*\\\n\s*-d '(?P<body>[^']*)'\n(?P<out>(?:# .*\n)+)", re.M
)
_ROUTES = re.compile(r"(<!-- routes:[^\n]*-->\n)(.*?)(<!-- /routes -->)", re.S)


def matches(shown: Any, got: Any) -> bool:
    """`got` has what `shown` shows: the same keys and values, ANY matching any value."""
    if shown == ANY:
        return True
    if isinstance(shown, dict):
        return (
            isinstance(got, dict) and shown.keys() == got.keys() and all(matches(v, got[k]) for k, v in shown.items())
        )
    if isinstance(shown, list):
        return isinstance(got, list) and len(shown) == len(got) and all(map(matches, shown, got))
    if isinstance(shown, str) and ANY in shown:
        return isinstance(got, str) and got.startswith(shown.split(ANY)[0])
    return shown == got


def examples() -> list[tuple[str, str, list[str]]]:
    text = README.read_text()
    found = [(m["path"], m["body"], [ln[2:] for ln in m["out"].splitlines()]) for m in _CURL.finditer(text)]
    assert found, "README.md has no curl examples"
    return found


def routes_table(openapi: dict[str, Any]) -> str:
    rows = ["| method | path | what |", "|---|---|---|"]
    for path, ops in openapi["paths"].items():  # a per-model route is listed once per model: once here
        route = ops.get("x-charlm-template", path)
        rows += [f"| `{m.upper()}` | `{route}` | {op.get('summary', '')} |" for m, op in ops.items() if m[:2] != "x-"]
    return "\n".join(dict.fromkeys(rows)) + "\n"


@pytest.mark.parametrize("index", range(len(examples())))
def test_each_curl_example_gives_what_the_readme_shows(client: httpx.Client, index: int) -> None:
    path, body, shown = examples()[index]
    r = client.post(path, content=body.encode(), headers={"content-type": "application/json"})
    assert r.status_code == 200, r.text
    if not shown[0].startswith("data: "):
        assert matches(json.loads(shown[0]), r.json()), f"README shows {shown[0]}\nserver sent {r.text}"
        return
    events = [line for line in r.text.split("\n\n") if line]
    at = 0
    for line in shown:
        want = line.removeprefix("data: ")
        while at < len(events):
            got = events[at].removeprefix("data: ")
            at += 1
            if want == got == "[DONE]" or (
                want != "[DONE]" and got != "[DONE]" and matches(json.loads(want), json.loads(got))
            ):
                break
        else:
            pytest.fail(f"README shows {line!r}, not among the stream's events (in order):\n{r.text}")


def test_the_route_list_is_the_servers(client: httpx.Client) -> None:
    table = routes_table(client.get("/openapi.json").json())
    text = README.read_text()
    block = _ROUTES.search(text)
    assert block, "README.md lost its routes markers"
    if os.environ.get("CHARLM_UPDATE_README") == "1":
        README.write_text(text[: block.start(2)] + table + text[block.end(2) :])
        return
    assert block[2] == table, f"README's route list is out of date; the server's:\n{table}"
