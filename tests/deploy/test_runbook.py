"""Every alert links its runbook: a `runbook_url` annotation that names a section of docs/runbook.md which
exists (GitHub's heading anchors) and says what the alert means, how to check and what to do."""

from __future__ import annotations

import re

from tests.support.deploy import PROM_DIR, ROOT, load_yaml

RUNBOOK = ROOT / "docs" / "runbook.md"
PARTS = ("**What it means.**", "**How to check.**", "**What to do.**")


def anchor(heading: str) -> str:
    """GitHub's anchor of a Markdown heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def sections() -> dict[str, str]:
    """anchor -> text of each `## ` section of the runbook."""
    parts = re.split(r"^## (.+)$", RUNBOOK.read_text(), flags=re.MULTILINE)
    return {anchor(title): body for title, body in zip(parts[1::2], parts[2::2], strict=True)}


def alerts() -> dict[str, dict]:
    groups = load_yaml(PROM_DIR / "alerts.yml")["groups"]
    return {r["alert"]: r for g in groups for r in g["rules"] if "alert" in r}


def test_every_alert_has_a_runbook_url_to_an_existing_section() -> None:
    found = sections()
    for name, rule in alerts().items():
        url = rule["annotations"].get("runbook_url")
        assert url, f"{name} has no runbook_url"
        path, _, target = url.partition("#")
        assert path.endswith("docs/runbook.md"), url
        assert target == anchor(name), f"{name} links #{target}"
        assert target in found, f"docs/runbook.md has no section #{target}"


def test_one_runbook_section_per_alert_with_meaning_check_and_action() -> None:
    found = sections()
    assert set(found) == {anchor(name) for name in alerts()}
    for name, body in found.items():
        for part in PARTS:
            assert part in body, f"#{name} lacks {part}"
    # Links inside the runbook to other sections land too.
    for target in re.findall(r"\]\(#([^)]+)\)", RUNBOOK.read_text()):
        assert target in found, target
