"""docs/DESIGN.md names the test that pins each invariant: every named test must exist."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_every_invariant_in_the_design_doc_names_an_existing_test():
    named = set(re.findall(r"`(test_[a-z0-9_]+)`", (ROOT / "docs" / "DESIGN.md").read_text()))
    assert len(named) >= 20
    sources = "\n".join(p.read_text() for p in (ROOT / "tests").rglob("*.py"))
    defined = set(re.findall(r"^(?:def |test_\w+ = )(test_[a-z0-9_]+)", sources, re.M))
    defined |= set(re.findall(r"^(test_[a-z0-9_]+) =", sources, re.M))
    assert named <= defined, f"DESIGN.md names tests that do not exist: {sorted(named - defined)}"
