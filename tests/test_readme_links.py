"""README.md's links lead somewhere: each ``#anchor`` to a heading, each relative path (the picture at its top
included) to a file of the repository, and its table of contents lists every section in order."""

from __future__ import annotations

import re

from PIL import Image

from tests.helpers.workplace import REPO_ROOT

README = REPO_ROOT / "README.md"
LINK = re.compile(r"(!?)\[[^\]]*\]\(([^)\s]+)\)")


def _prose() -> str:
    """README without its code blocks, where brackets and '#' are code, not links or headings."""
    return re.sub(r"^```.*?^```", "", README.read_text(), flags=re.MULTILINE | re.DOTALL)


def _anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation other than '-' dropped, spaces as '-'."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _headings(level: str = "#+") -> list[str]:
    return re.findall(rf"^{level} (.+)$", _prose(), flags=re.MULTILINE)


def test_every_link_leads_to_a_heading_or_a_file():
    anchors = {_anchor(heading) for heading in _headings()}
    links = LINK.findall(_prose())
    assert len(links) > 20
    for is_picture, target in links:
        if target.startswith("#"):
            assert target[1:] in anchors, f"README links to {target}, which no heading has"
        elif not re.match(r"[a-z]+://", target):
            file = REPO_ROOT / target
            assert file.is_file(), f"README links to {target}, which is not in the repository"
            if is_picture:
                with Image.open(file) as picture:
                    assert picture.width >= 600, f"{target} is {picture.width} px wide"


def test_the_contents_list_every_section_in_order():
    prose = _prose()
    contents = prose.split("## Contents\n", 1)[1].split("\n## ", 1)[0]
    listed = re.findall(r"^- \[[^\]]+\]\(#([^)]+)\)$", contents, flags=re.MULTILINE)
    sections = [_anchor(heading) for heading in _headings("##") if heading != "Contents"]
    assert listed == sections
    # The picture comes before the contents: what the project is, then how to read about it.
    assert prose.index("![") < prose.index("## Contents")
