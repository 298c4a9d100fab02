"""Citations of the project's own documentation (docs/README.md) hold.

Code, tests and READMEs cite ``docs/<file>.md §N.M``. These tests fail when a tracked file
outside ``docs/`` still cites one of the four documents by its bare name (they used to live
outside the repository), when a cited ``docs/`` file does not exist, when a cited section
number is not a heading of that file, and when a link inside ``docs/`` points at a missing
file, section or anchor.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"

#: The documents' names before they moved into docs/ ("kubernetes" is now docs/operator.md).
FORMER_NAMES = ("protocol", "design", "kubernetes", "http-bridge")
FORMER_CITATION = re.compile(
    r"(?<![\w.-])(?P<prefix>(?:[\w.-]+/)*)(?P<name>" + "|".join(map(re.escape, FORMER_NAMES)) + r")\.md\b"
)

#: Files other work is still converting: they may cite the former names until then. Every
#: other check still applies to them. The lead developer empties this list once they are done.
PENDING_CONVERSION: frozenset[str] = frozenset(
    {
        "tests/integration/sequence_helpers.py",
        "tests/integration/test_connect_sequence.py",
        "tests/integration/test_normal_commands.py",
        "tests/integration/test_normal_session.py",
        "tests/integration/test_normal_statuses.py",
    }
)

DOCS_CITATION = re.compile(r"(?<![\w.-])(?:[\w.-]+/)*docs/(?P<name>[\w-]+)\.md\b")
SECTION = re.compile(r"§\s?(?P<number>\d+(?:\.\d+)*)")
HEADING = re.compile(r"^(?P<level>#{1,6})\s+(?P<text>.+?)\s*#*\s*$")
SECTION_NUMBER = re.compile(r"^(?:Appendix\s+)?(?P<number>(?:\d+|[A-Z])(?:\.\d+)*)\.?(?:\s|$)")
LOCAL_LINK = re.compile(r"\]\((?P<target>[\w./-]*?)(?:#(?P<anchor>[^)\s]+))?\)")
IN_DOC_SECTION = re.compile(r"(?:(?P<doc>[\w-]+)\.md\s+)?§\s?(?P<number>\d+(?:\.\d+)*)")


def tracked_files() -> list[str]:
    out = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True, text=True
    ).stdout
    return [name for name in out.split("\0") if name]


def read_text(relative: str) -> str | None:
    """The file's text, or None for a binary file or one missing from the working tree."""
    try:
        return (ROOT / relative).read_text(encoding="utf-8")
    except (UnicodeDecodeError, FileNotFoundError, IsADirectoryError):
        return None


def files_outside_docs() -> Iterator[tuple[str, str]]:
    for relative in tracked_files():
        if relative.startswith("docs/"):
            continue
        text = read_text(relative)
        if text is not None:
            yield relative, text


def headings(markdown: str) -> list[str]:
    """Heading texts, fenced code blocks skipped."""
    found: list[str] = []
    fenced = False
    for line in markdown.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        match = None if fenced else HEADING.match(line)
        if match:
            found.append(match["text"])
    return found


@cache
def sections_of(doc: str) -> frozenset[str]:
    """Section numbers of docs/<doc>.md taken from its headings ("## 4.", "### 4.14 …")."""
    numbers = set()
    for text in headings((DOCS / f"{doc}.md").read_text(encoding="utf-8")):
        match = SECTION_NUMBER.match(text)
        if match:
            numbers.add(match["number"])
    return frozenset(numbers)


def anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = heading.lower().replace("`", "")
    text = "".join(ch for ch in text if ch.isalnum() or ch in " -_")
    return text.replace(" ", "-")


@cache
def anchors_of(doc: str) -> frozenset[str]:
    return frozenset(anchor(text) for text in headings((DOCS / f"{doc}.md").read_text(encoding="utf-8")))


def cited_sections(text: str) -> Iterator[tuple[int, str, str]]:
    """(line, document, section) of every ``docs/<name>.md §N.M`` citation.

    The sections of a citation are the § numbers that follow the file name on the same line,
    up to the next file name, a closing parenthesis or a semicolon: in
    "(docs/protocol.md §4.8.1, §4.12–§4.14; checklist §8.9)" they are 4.8.1, 4.12 and 4.14.
    """
    for number, line in enumerate(text.splitlines(), start=1):
        matches = list(DOCS_CITATION.finditer(line))
        for index, match in enumerate(matches):
            end = matches[index + 1].start() if index + 1 < len(matches) else len(line)
            tail = re.split(r"[);]", line[match.end() : end], maxsplit=1)[0]
            for section in SECTION.finditer(tail):
                yield number, match["name"], section["number"]


def test_the_documents_exist() -> None:
    for name in ("README", "protocol", "design", "operator", "http-bridge"):
        assert (DOCS / f"{name}.md").is_file(), f"docs/{name}.md is missing"


def test_headings_give_the_numbered_sections() -> None:
    protocol = sections_of("protocol")
    # Spot checks of the numbering the code relies on, including list-like sections.
    assert {"0", "2.4", "4.8.1", "4.14", "4.15", "5.7", "6.9", "8.12", "10.7", "10.16"} <= protocol
    assert {"4.1", "4.15"} <= sections_of("http-bridge")
    assert {"3"} <= sections_of("design")


def test_cited_sections_are_found_in_the_section_parser() -> None:
    line = "x (docs/protocol.md §4.8.1, §4.12–§4.14; checklist §8.9) and docs/design.md §3."
    assert list(cited_sections(line)) == [
        (1, "protocol", "4.8.1"),
        (1, "protocol", "4.12"),
        (1, "protocol", "4.14"),
        (1, "design", "3"),
    ]


def test_no_file_cites_the_former_document_names() -> None:
    offenders = []
    for relative, text in files_outside_docs():
        if relative in PENDING_CONVERSION:
            continue
        for number, line in enumerate(text.splitlines(), start=1):
            for match in FORMER_CITATION.finditer(line):
                if not match["prefix"].endswith("docs/"):
                    offenders.append(f"{relative}:{number}: {match.group(0)}")
    assert not offenders, "cite docs/<file>.md instead:\n" + "\n".join(offenders)


def test_cited_docs_files_and_sections_exist() -> None:
    existing = {path.stem for path in DOCS.glob("*.md")}
    problems = []
    for relative, text in files_outside_docs():
        for number, line in enumerate(text.splitlines(), start=1):
            for match in DOCS_CITATION.finditer(line):
                if match["name"] not in existing:
                    problems.append(f"{relative}:{number}: docs/{match['name']}.md does not exist")
        for number, doc, section in cited_sections(text):
            if doc in existing and section not in sections_of(doc):
                problems.append(f"{relative}:{number}: docs/{doc}.md has no section §{section}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("doc", sorted(path.stem for path in DOCS.glob("*.md")))
def test_links_and_sections_inside_docs_resolve(doc: str) -> None:
    text = (DOCS / f"{doc}.md").read_text(encoding="utf-8")
    problems = []
    for number, line in enumerate(text.splitlines(), start=1):
        for link in LOCAL_LINK.finditer(line):
            target, fragment = link["target"], link["anchor"]
            if target.startswith(("http:", "https:")):
                continue
            path = (DOCS / target).resolve() if target else DOCS / f"{doc}.md"
            if not path.exists():
                problems.append(f"docs/{doc}.md:{number}: link to missing {target}")
            elif (
                fragment
                and path.parent == DOCS
                and path.suffix == ".md"
                and fragment not in anchors_of(path.stem)
            ):
                problems.append(f"docs/{doc}.md:{number}: no heading for #{fragment} in {path.name}")
        for match in IN_DOC_SECTION.finditer(line):
            target_doc = match["doc"] or doc
            if target_doc in {"protocol", "design", "operator", "http-bridge"} and (
                match["number"] not in sections_of(target_doc)
            ):
                problems.append(f"docs/{doc}.md:{number}: {target_doc}.md has no section §{match['number']}")
    assert not problems, "\n".join(problems)
