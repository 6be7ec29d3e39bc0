"""The README stays a guide (short, with the test command CI runs) and no relative link in
README.md or docs/ points at a file that does not exist."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)


def _docs() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def test_readme_is_a_guide_of_at_most_300_lines():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 300


def test_ci_runs_exactly_the_readme_test_command():
    text = (ROOT / "README.md").read_text()
    m = re.search(
        r"The test command, run by CI exactly as written here:\n\n```bash\n(.+)\n```", text
    )
    assert m is not None, "README.md lost its test command block"
    ci = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line.strip()]
    assert ci[-1] == m[1]


def test_every_relative_link_resolves():
    missing = []
    for doc in _docs():
        for target in LINK.findall(FENCE.sub("", doc.read_text())):
            if re.match(r"[a-z]+:|#", target):
                continue
            path = (doc.parent / target.split("#")[0]).resolve()
            if not path.exists():
                missing.append(f"{doc.relative_to(ROOT)}: {target}")
    assert missing == []
