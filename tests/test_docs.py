"""The README and docs/: every relative link resolves (file and #anchor), every page is reachable from the
README, and the README stays a front page whose Quickstart commands `.ci/run` can read."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
PAGES = sorted((ROOT / "docs").glob("*.md"))

FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.S | re.M)  # fenced code blocks
CODE_SPAN = re.compile(r"`+[^`\n]*`+")
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.M)
HTML_ANCHOR = re.compile(r"<a\s+(?:id|name)=\"([^\"]+)\"", re.I)


def _prose(text: str) -> str:
    """The text without code: links and headings inside code blocks or code spans do not count."""
    return CODE_SPAN.sub("", FENCE.sub("", text))


def slug(heading: str) -> str:
    """GitHub's heading anchor: lowercase, keep letters, digits, spaces, '-' and '_', spaces become '-'."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = path.read_text(encoding="utf-8")
    found: set[str] = set(HTML_ANCHOR.findall(text))
    seen: dict[str, int] = {}
    for heading in HEADING.findall(FENCE.sub("", text)):
        s = slug(heading)
        n = seen.get(s, 0)
        seen[s] = n + 1
        found.add(s if n == 0 else f"{s}-{n}")
    return found


def links(path: Path) -> list[str]:
    return LINK.findall(_prose(path.read_text(encoding="utf-8")))


def broken_links(path: Path) -> list[str]:
    """Every relative link of a markdown file whose target file or #anchor does not exist."""
    problems = []
    for link in links(path):
        if re.match(r"(https?|mailto):", link):
            continue
        target, _, anchor = link.partition("#")
        dest = (path.parent / target).resolve() if target else path
        if not dest.exists():
            problems.append(f"{path.name}: {link}: no such file")
        elif anchor and (dest.suffix != ".md" or anchor not in anchors(dest)):
            problems.append(f"{path.name}: {link}: no such anchor")
    return problems


def test_every_relative_link_resolves():
    assert PAGES, "docs/ has no pages"
    problems = [p for page in [README, *PAGES] for p in broken_links(page)]
    assert not problems, "\n".join(problems)


def test_every_docs_page_is_linked_from_the_readme():
    linked = {(ROOT / link.partition("#")[0]).resolve() for link in links(README)}
    missing = [page.name for page in PAGES if page.resolve() not in linked]
    assert not missing, f"README.md links no {missing}"


def test_readme_is_a_front_page_with_both_quickstart_commands():
    lines = README.read_text(encoding="utf-8").split("\n")
    assert len(lines) < 250, f"README.md has {len(lines)} lines"
    for marker in ("<!-- serve-command -->", "<!-- test-command -->"):
        assert marker in lines, marker
        i = lines.index(marker)
        fence, command, close = lines[i + 1:i + 4]
        assert fence == "```bash" and close == "```", marker
        assert command.startswith("python3 -m venv .venv && "), command


def test_the_checker_finds_a_broken_file_and_a_broken_anchor(tmp_path):
    page = tmp_path / "page.md"
    (tmp_path / "other.md").write_text("# Other\n\n## Same\n\n## Same\n\n<a id=\"explicit\"></a>\n")
    page.write_text(
        "# Page: `one`\n\n```\n# not a heading\n[not a link](gone.md)\n```\n\n"
        "[ok](other.md) [ok](other.md#same-1) [ok](other.md#explicit) [ok](#page-one) [web](https://example.com/x)\n"
        "[bad file](missing.md) [bad anchor](other.md#same-2) [bad self](#not-a-heading)\n"
    )
    assert broken_links(page) == [
        "page.md: missing.md: no such file",
        "page.md: other.md#same-2: no such anchor",
        "page.md: #not-a-heading: no such anchor",
    ]
