"""Every label a module's code cites resolves inside this repository.

A docstring or comment that cites an equation or a named quantity, as ``(L11)``, ``(S9)`` or
``Eq. 5``, must find it defined in the "Equations" section of ``docs/<module>.md`` (label,
formula, one line of meaning). Code never points at a file outside the repo (the paper briefs
the modules were written from are not part of it), so citations such as ``papers/lidar.md`` or
"spec 5.2" fail here.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "src" / "cvpr24"
MODULES = sorted(
    p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").is_file() and p.name != "common"
)

# (L11), (S9), (E2a): one to three capitals, a number, an optional letter, in parentheses.
_PAREN = re.compile(r"\(([A-Z]{1,3}\d+[a-z]?)\)")
# Eq. 5, Eq. (5), Eqs. 5: numbered equations of the paper.
_EQ = re.compile(r"\bEqs?\.\s*\(?(\d+[a-z]?)\)?")
# Pointers outside the repository: the paper briefs ("papers/x.md", "spec 5.2", "the spec").
_OUTSIDE = re.compile(
    r"papers/\w+\.md|\.\./shared|\bthe spec\b|\bspec(?:'s)?\s+(?:section\s+)?[A-Z]?\d", re.IGNORECASE
)


def _sources(module: str) -> list[Path]:
    return sorted((PACKAGE / module).rglob("*.py"))


def cited_labels(text: str) -> set[str]:
    """The labels a source text cites, normalised: ``(L11)`` and ``Eq. 5``."""
    return {f"({m})" for m in _PAREN.findall(text)} | {f"Eq. {m}" for m in _EQ.findall(text)}


def equations_section(doc: str) -> str:
    """The text of the "## Equations" section (to the next level-2 heading), or ``""``."""
    m = re.search(r"^## Equations[^\n]*\n(.*?)(?=^## |\Z)", doc, re.MULTILINE | re.DOTALL)
    return m.group(1) if m else ""


def defined_labels(section: str) -> set[str]:
    """Labels the section defines, written bare (``| L11 |``) or as cited (``(L11)``, ``Eq. 5``)."""
    bare = re.findall(r"(?<![\w(])([A-Z]{1,3}\d+[a-z]?)(?![\w)])", section)
    return cited_labels(section) | {f"({m})" for m in bare}


def test_label_patterns():
    text = "the rate (L11) and (S9), Eq. 5 and Eq. (3), Eqs. 10; not (x1) nor (ABCD1)"
    assert cited_labels(text) == {"(L11)", "(S9)", "Eq. 5", "Eq. 3", "Eq. 10"}
    doc = "# m\n## Use\n(L1)\n## Equations\n| (L2) | x | y |\n| Eq. 4 | a | b |\n| E5 | c |\n## Deviations\n(L3)\n"
    assert defined_labels(equations_section(doc)) == {"(L2)", "Eq. 4", "(E5)"}
    assert _OUTSIDE.search("see papers/lidar.md") and _OUTSIDE.search("as spec 5.2 says")
    assert _OUTSIDE.search("the spec's layer list") and _OUTSIDE.search("(spec E2)")
    assert not _OUTSIDE.search("the spectral norm; make_judge(spec: str)")


@pytest.mark.parametrize("module", MODULES)
def test_every_cited_label_is_defined_in_the_docs(module):
    cited: dict[str, list[str]] = {}
    for path in _sources(module):
        for label in cited_labels(path.read_text()):
            cited.setdefault(label, []).append(path.name)
    if not cited:
        return
    doc_path = ROOT / "docs" / f"{module}.md"
    assert doc_path.is_file(), f"{module} cites {sorted(cited)} but has no docs/{module}.md"
    defined = defined_labels(equations_section(doc_path.read_text()))
    missing = {k: v for k, v in sorted(cited.items()) if k not in defined}
    assert not missing, f"docs/{module}.md, section 'Equations', does not define: {missing}"


@pytest.mark.parametrize("module", MODULES)
def test_code_points_at_nothing_outside_the_repo(module):
    hits = [
        f"{path.relative_to(ROOT)}:{n}: {line.strip()}"
        for path in _sources(module)
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if _OUTSIDE.search(line)
    ]
    assert not hits, "cites a file outside the repository:\n" + "\n".join(hits)
