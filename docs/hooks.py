"""mkdocs hook: the site's home page is README.md, so the two never drift apart.

``docs/index.md`` holds one marker line; this hook replaces it with the README. The README's links
are written for GitHub, relative to the repository root: ``docs/x.md`` becomes ``x.md``; a link to
another file of the repository (``examples/...``, ``benchmarks/...``), which is not part of the
site, keeps its text and loses the link. Web links and anchors stay as they are.
"""

from __future__ import annotations

import re
from pathlib import Path

MARKER = "<!-- README.md -->"
README = Path(__file__).resolve().parents[1] / "README.md"
_LINK = re.compile(r"(?<!!)\[([^\]]+)\]\(([^)\s]+)\)")


def _relink(match: re.Match) -> str:
    text, target = match.groups()
    if target.startswith("docs/"):
        return f"[{text}]({target[len('docs/') :]})"
    if re.match(r"^(?:[a-z]+:|#)", target):
        return match.group(0)
    return text


def on_page_markdown(markdown: str, page, config, files) -> str:
    if MARKER not in markdown:
        return markdown
    return markdown.replace(MARKER, _LINK.sub(_relink, README.read_text(encoding="utf-8")))
