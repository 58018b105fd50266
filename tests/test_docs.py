"""The README stays short, and every link in it and in docs/ reaches a file and a heading."""

import re
from pathlib import Path

ROOT = Path(__file__).parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def headings(page: Path) -> set[str]:
    """GitHub's anchors for a page's headings (fenced code skipped)."""
    found, fenced = set(), False
    for line in page.read_text().splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and line.startswith("#"):
            text = re.sub(r"[^\w\- ]", "", line.lstrip("#").strip().lower())
            found.add(text.replace(" ", "-"))
    return found


def test_every_relative_link_reaches_a_file_and_a_heading():
    broken = []
    for page in PAGES:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if target.startswith(("http://", "https://")):
                continue
            name, _, anchor = target.partition("#")
            linked = (page.parent / name) if name else page
            if not linked.exists() or (anchor and anchor not in headings(linked)):
                broken.append(f"{page.relative_to(ROOT)}: {target}")
    assert broken == []


def test_readme_stays_short_with_details_in_docs():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 300, "move details to docs/ (see README's 'More')"
    for page in ("operations", "performance", "design", "configuration"):
        assert f"](docs/{page}.md" in readme, page
    assert "make run" in readme and "make test" in readme
