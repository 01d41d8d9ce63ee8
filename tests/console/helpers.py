"""What every browser test does on a page: sign in, check accessibility, keep a screenshot."""

from __future__ import annotations

import itertools
import re
import shutil
from pathlib import Path
from typing import Any

from playwright.sync_api import Page, expect

AXE = Path(__file__).parent / "vendor" / "axe.min.js"
BLOCKING = ("serious", "critical")


def sign_in(page: Page, token: str, *, expect_name: str, expect_scope: str) -> None:
    page.goto("/ui/")
    expect(page).to_have_url(re.compile(r"/ui/sign-in\?next=%2Fui%2F$"))
    page.get_by_label("Token").fill(token)
    page.get_by_label("Token").press("Enter")  # keyboard: the form submits from the field
    expect(page.get_by_role("heading", level=1)).to_have_text("Overview")
    expect(page.get_by_test_id("token-name")).to_have_text(expect_name)
    expect(page.get_by_test_id("token-scope")).to_have_text(expect_scope)


def axe_violations(page: Page) -> list[dict[str, Any]]:
    """Serious and critical axe-core violations of the page as it is now."""
    if not page.evaluate("() => typeof window.axe !== 'undefined'"):
        page.add_script_tag(path=str(AXE))
    found: list[dict[str, Any]] = page.evaluate(
        """async () => (await axe.run(document, {resultTypes: ["violations"]})).violations
            .map(v => ({id: v.id, impact: v.impact, help: v.help,
                        nodes: v.nodes.slice(0, 5).map(n => n.target.join(" "))}))"""
    )
    return [v for v in found if v["impact"] in BLOCKING]


def check_page(page: Page, out: Path, name: str, *, docs: Path | None = None) -> None:
    """The page has a title and one h1 first, headings that never skip a level, no
    serious or critical axe violations; a full-page screenshot goes to `out` (and `docs`)."""
    expect(page).to_have_title(re.compile(r"\S · retention console$"))  # waits for navigation
    levels = page.eval_on_selector_all(
        "main h1, main h2, main h3, main h4", "els => els.map(e => Number(e.tagName[1]))"
    )
    assert levels[:1] == [1], levels
    assert all(b - a <= 1 for a, b in itertools.pairwise(levels)), levels
    assert axe_violations(page) == [], page.url
    shot = out / f"{name}.png"
    page.screenshot(path=str(shot), full_page=True)
    if docs is not None:
        docs.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, docs / f"{name}.png")
