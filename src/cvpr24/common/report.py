"""The reproduction report: ``reports/index.html``, read at a glance.

The first screen answers "what holds?": one summary row per module (claims passed / failed /
not tested, wall time, mode, seeds). Each module then has a short row per claim (claim,
measured with spread, the comparison applied, verdict badge); the criterion with its reason,
the notes and the per-seed values are folded under ``<details>``; its figures follow with
captions. The page holds the facts of the ``result.json`` files and nothing else.

Self-contained HTML: inline CSS, no scripts, fonts or CDNs. Fixed table layouts and wrapping
cells keep it free of horizontal scrolling down to 800 px.
"""

from __future__ import annotations

import html
import os
from collections.abc import Iterable
from pathlib import Path

from cvpr24.common.io import atomic_write
from cvpr24.common.result import STATUSES, Claim, Result

_CSS = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:1.5em auto;max-width:1100px;color:#222;padding:0 1em;overflow-wrap:anywhere}
h1{font-size:1.6em;margin:.2em 0} h2{margin-top:1.8em;border-bottom:1px solid #ddd;padding-bottom:.2em}
table{border-collapse:collapse;width:100%;margin:.6em 0;table-layout:fixed}
th,td{border:1px solid #ddd;padding:.3em .45em;vertical-align:top;text-align:left;overflow-wrap:anywhere}
th{background:#f4f4f4;font-weight:600}
td.num{font-family:ui-monospace,Menlo,monospace;font-size:.92em}
.badge{display:inline-block;padding:.05em .5em;border-radius:.8em;font-size:.8em;font-weight:600;white-space:nowrap}
.passed{background:#cdeccd;color:#14501a}.failed{background:#f6cfcd;color:#7a1712}
.error{background:#f4d2b0;color:#6a3300}.not-tested{background:#e3e3e3;color:#444}
.partial{background:#fbeeb0;color:#5c4500}
details{margin:.2em 0} summary{cursor:pointer;color:#555;font-size:.9em}
details p,details ul{margin:.3em 0 .3em 1em;font-size:.92em}
pre{background:#f6f6f6;padding:.6em;font-size:12px;white-space:pre-wrap;overflow-wrap:anywhere;max-height:24em;overflow-y:auto}
.figs{display:flex;flex-wrap:wrap;gap:.8em}
figure{margin:0;flex:1 1 320px;max-width:100%} figure img{width:100%;height:auto;border:1px solid #ddd}
figcaption{font-size:.85em;color:#555} .meta{color:#555;font-size:.92em}
"""

_SUMMARY_COLS = ("module", "verdict", "passed", "failed", "not tested", "wall time", "mode", "seeds")
_CLAIM_COLS = ('<col style="width:34%">', '<col style="width:22%">', '<col style="width:32%">',
               '<col style="width:12%">')


def _e(x: object) -> str:
    return html.escape("" if x is None else str(x))


def _badge(status: str) -> str:
    return f'<span class="badge {status.replace(" ", "-")}">{_e(status)}</span>'


def _label(r: Result) -> str:
    """The module's verdict, with ``partial`` when it ran out of budget part-way."""
    return _badge(r.status) + (" " + _badge("partial") if r.partial else "")


def claim_counts(r: Result) -> dict[str, int]:
    """Claims per status for one module (``error`` counts a module that produced no claim)."""
    counts = {s: sum(c.status == s for c in r.claims) for s in STATUSES}
    if r.error is not None and not r.claims:
        counts["error"] += 1
    return counts


def _seeds(r: Result) -> str:
    return ", ".join(map(str, r.seeds)) if r.seeds else "-"


def _summary(results: list[Result]) -> str:
    rows = []
    for r in results:
        n = claim_counts(r)
        cells = [
            f'<a href="#{_e(r.module)}">{_e(r.module)}</a>',
            _label(r),
            n["passed"],
            n["failed"],
            n["not tested"],
            f"{r.wall_time_s:.0f} s",
            _e(r.mode),
            _e(_seeds(r)),
        ]
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    head = "".join(f"<th>{c}</th>" for c in _SUMMARY_COLS)
    return (
        f'<table id="summary"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'
    )


def _claim_details(c: Claim) -> str:
    items = [f"<p><b>Criterion.</b> {_e(c.criterion)}</p>"]
    if c.paper_value is not None:
        items.append(f"<p><b>Paper.</b> {_e(c.paper_value)}</p>")
    if c.measured is not None and len(c.measured.values) > 1:
        unit = f" {c.measured.unit}" if c.measured.unit else ""
        values = ", ".join(f"{v:.4g}" for v in c.measured.values)
        items.append(f"<p><b>Per seed.</b> {_e(values)}{_e(unit)}</p>")
    if c.notes:
        items.append(f"<p><b>Notes.</b> {_e(c.notes)}</p>")
    return "<details><summary>criterion, reasoning, per-seed values</summary>" + "".join(items) + "</details>"


def _statement(c: Claim) -> str:
    """The statement without a leading "NAME:" that repeats the claim's name beside it."""
    head = f"{c.name}:"
    return c.statement[len(head):].lstrip() if c.statement.startswith(head) else c.statement


def _claims_table(r: Result) -> str:
    rows = []
    for c in r.claims:
        measured = "-" if c.measured is None else str(c.measured)
        rows.append(
            f'<tr class="claim" data-status="{_e(c.status)}">'
            f"<td><b>{_e(c.name)}</b> {_e(_statement(c))}{_claim_details(c)}</td>"
            f'<td class="num">{_e(measured)}</td>'
            f'<td class="num">{_e(c.comparison or c.criterion)}</td>'
            f"<td>{_badge(c.status)}</td></tr>"
        )
    head = "<th>claim</th><th>measured</th><th>comparison</th><th>verdict</th>"
    return (
        f'<table class="claims"><colgroup>{"".join(_CLAIM_COLS)}</colgroup>'
        f"<thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )


def _caption(fig: str) -> str:
    return Path(fig).stem.replace("_", " ").replace("-", " ")


def _module_section(r: Result) -> str:
    parts = [
        f'<h2 id="{_e(r.module)}">{_e(r.module)} {_label(r)}</h2>',
        f'<p class="meta">mode {_e(r.mode)} &middot; seeds {_e(_seeds(r))} &middot; '
        f"wall time {r.wall_time_s:.1f} s</p>",
    ]
    if r.error:
        first = r.error.strip().splitlines()[-1][:300] if r.error.strip() else "error"
        what = "stopped part-way" if r.partial else "did not finish"
        parts.append(
            f"<p>The reproduction {what}: {_e(first)}</p>"
            f"<details><summary>log</summary><pre>{_e(r.error)}</pre></details>"
        )
    if r.claims:
        parts.append(_claims_table(r))
    if r.deviations:
        parts.append(
            "<details><summary>deviations from the paper</summary><ul>"
            + "".join(f"<li>{_e(d)}</li>" for d in r.deviations)
            + "</ul></details>"
        )
    if r.figures:
        figs = "".join(
            f'<figure><a href="{_e(r.module)}/{_e(f)}"><img src="{_e(r.module)}/{_e(f)}" '
            f'alt="{_e(_caption(f))}"></a><figcaption>{_e(_caption(f))}</figcaption></figure>'
            for f in r.figures
        )
        parts.append(f'<div class="figs">{figs}</div>')
    return f'<section class="module" data-module="{_e(r.module)}">' + "\n".join(parts) + "</section>"


def render_html(results: Iterable[Result], title: str = "cvpr24 reproduction report") -> str:
    """The report page for ``results`` as a string."""
    results = sorted(results, key=lambda r: r.module)
    totals = {s: 0 for s in STATUSES}
    for r in results:
        for s, n in claim_counts(r).items():
            totals[s] += n
    line = " &middot; ".join(f"{n} {_e(s)}" for s, n in totals.items() if n) or "no claims"
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>",
            f"<h1>{_e(title)}</h1>",
            f'<p class="meta">{len(results)} modules &middot; claims: {line}</p>',
            _summary(results),
            *[_module_section(r) for r in results],
            "</body></html>",
        ]
    )


def load_results(out_dir: str | os.PathLike) -> list[Result]:
    """Every ``<out_dir>/<module>/result.json`` present."""
    return [Result.load(p) for p in sorted(Path(out_dir).glob("*/result.json"))]


def write_report(out_dir: str | os.PathLike, results: Iterable[Result] | None = None) -> Path:
    """Write ``<out_dir>/index.html`` atomically from ``results`` (default: every
    ``result.json`` found under ``out_dir``). Returns the page's path."""
    out_dir = Path(out_dir)
    if results is None:
        results = load_results(out_dir)
    path = out_dir / "index.html"
    with atomic_write(path) as f:
        f.write(render_html(results))
    return path
