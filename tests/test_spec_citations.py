"""Every citation of the product contract resolves (issue 21, friction 8).

Modules, the example config and the docs cite ``SPEC.md``; the repository used not to contain it,
so a reader could not follow a reference. The contract is now ``docs/SPEC.md`` (a verbatim copy of
what the acceptance suite checks), and this test holds every citation to it: each mention of SPEC
in chunkd/, config/, docs/, systemd/ and README.md names ``docs/SPEC.md`` and is followed by a
quoted section name or phrase ("Rounds", "at most 64 KiB a line") that appears in that file.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

TOP = Path(__file__).resolve().parents[1]
SPEC = TOP / "docs" / "SPEC.md"
SCANNED = ("chunkd", "config", "docs", "systemd", "README.md")
SUFFIXES = {".py", ".toml", ".md", ".service", ".sh", ".tmpfiles", ".sysusers", ".txt", ""}

#: Quotes of a program's output, not citations: the lifecycle oracle's failure message, as
#: docs/RELIABILITY.md quotes the findings it reported.
QUOTED_OUTPUT = ("SPEC's retention keeps it",)

#: ``docs/SPEC.md``, an optional Markdown link target, then the first quoted phrase.
CITATION = re.compile(r'docs/SPEC\.md(?:\]\([^)]*\))?[\s,:;(]*"(?P<phrase>[^"]+)"')
MENTION = re.compile(r"\bSPEC\b")


def _flat(text: str) -> str:
    """Lines joined with one space, comment and list markers dropped: a citation may wrap."""
    return re.sub(r"[ \t]*\n[ \t]*(?:#:?|\*|>)?[ \t]*", " ", text)


def _normal(text: str) -> str:
    return " ".join(text.replace("`", "").replace("*", "").split()).lower()


def _files() -> list[Path]:
    found: list[Path] = []
    for name in SCANNED:
        path = TOP / name
        candidates = [path] if path.is_file() else sorted(path.rglob("*"))
        found.extend(
            p
            for p in candidates
            if p.is_file() and p.suffix in SUFFIXES and p != SPEC and "__pycache__" not in p.parts
        )
    return found


def citations(text: str) -> tuple[list[str], list[str]]:
    """(the quoted phrases of the citations, the mentions of SPEC that are not citations)."""
    flat = _flat(text)
    for quote in QUOTED_OUTPUT:
        flat = flat.replace(quote, "")
    phrases = [m.group("phrase") for m in CITATION.finditer(flat)]
    cited = {m.start() + len("docs/") for m in CITATION.finditer(flat)}
    # the link target of ``[docs/SPEC.md](SPEC.md)`` (from docs/) or ``(docs/SPEC.md)``
    links = {m.start("s") for m in re.finditer(r"\]\((?:docs/)?(?P<s>SPEC)\.md\)", flat)}
    loose = [
        flat[max(0, m.start() - 40) : m.end() + 40]
        for m in MENTION.finditer(flat)
        if m.start() not in cited and m.start() not in links
    ]
    return phrases, loose


def test_the_contract_is_in_the_repository() -> None:
    text = SPEC.read_text()
    assert "# chunkd — the product contract" in text
    assert "acceptance suite" in text.split("\n# ", 1)[0]  # the header says what it is


@pytest.mark.parametrize("path", _files(), ids=lambda p: str(p.relative_to(TOP)))
def test_every_spec_citation_names_docs_spec_and_a_section_in_it(path: Path) -> None:
    spec = _normal(SPEC.read_text())
    phrases, loose = citations(path.read_text(errors="replace"))
    assert not loose, f"cite docs/SPEC.md with a quoted section name or phrase: {loose}"
    missing = [p for p in phrases if _normal(p) not in spec]
    assert not missing, f"not in docs/SPEC.md: {missing}"
    for link in re.finditer(r"\]\(([^)]*SPEC\.md)\)", path.read_text(errors="replace")):
        assert (path.parent / link.group(1)).resolve() == SPEC, link.group(0)


def test_the_checker_catches_what_it_should() -> None:
    """The test above cannot pass vacuously: a bare ``SPEC.md``, a section that does not exist
    and an unquoted citation are all caught; a citation that wraps a line is accepted."""
    assert citations('# (SPEC.md, "Rounds")')[1]
    assert citations("# see SPEC Rounds")[1]
    assert citations("# see docs/SPEC.md Rounds")[1]
    phrases, loose = citations('#: one (docs/SPEC.md,\n#: "Rounds" and "No such section")')
    assert phrases == ["Rounds"] and not loose
    spec = _normal(SPEC.read_text())
    assert _normal("No such section") not in spec and _normal("Rounds") in spec
    assert sum(len(citations(p.read_text())[0]) for p in _files()) >= 30
