"""The reproduction report: ``reports/index.html``, one table of every claim.

Self-contained HTML (inline CSS, no scripts, no fonts or CDNs) that renders offline. Each
module's figures follow the table, read from ``<out>/<module>/``.
"""

from __future__ import annotations

import datetime as _dt
import html
import os
from collections.abc import Iterable
from pathlib import Path

from cvpr24.common.io import atomic_write
from cvpr24.common.result import Result

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:2em auto;max-width:1200px;color:#222;padding:0 1em}
table{border-collapse:collapse;width:100%;margin:1em 0}
th,td{border:1px solid #ccc;padding:.35em .5em;vertical-align:top;text-align:left}
th{background:#f3f3f3} td.num{font-family:ui-monospace,monospace;white-space:nowrap}
.passed{background:#d9f2d9}.failed{background:#f9d6d5}.error{background:#f4c7a1}
.not-tested{background:#e8e8e8} .verdict{font-weight:600;text-transform:uppercase;font-size:12px}
pre{background:#f6f6f6;padding:.7em;overflow:auto;font-size:12px;max-height:24em}
img{max-width:48%;margin:.3em;border:1px solid #ddd} h2{margin-top:2em;border-bottom:1px solid #ddd}
small{color:#666}
"""


def _e(x: object) -> str:
    return html.escape("" if x is None else str(x))


def _status_class(status: str) -> str:
    return status.replace(" ", "-")


def _claim_rows(r: Result) -> list[str]:
    if r.error is not None and not r.claims:
        return [
            f'<tr class="error"><td>{_e(r.module)}</td><td colspan="5">reproduction did not finish: '
            f"{_e(r.error.strip().splitlines()[-1] if r.error.strip() else 'error')}</td>"
            f'<td class="verdict">error</td></tr>'
        ]
    rows = []
    for c in r.claims:
        cls = _status_class(c.status)
        rows.append(
            f'<tr class="{cls}"><td>{_e(r.module)}</td>'
            f"<td><b>{_e(c.name)}</b> {_e(c.statement)}</td>"
            f'<td class="num">{_e(c.paper_value if c.paper_value is not None else "-")}</td>'
            f'<td class="num">{_e(c.measured if c.measured is not None else "-")}</td>'
            f"<td>{_e(c.criterion)}<br><small>{_e(c.comparison)}</small></td>"
            f"<td>{_e(c.notes)}</td>"
            f'<td class="verdict">{_e(c.status)}</td></tr>'
        )
    return rows


def _module_section(r: Result) -> str:
    parts = [
        f'<h2 id="{_e(r.module)}">{_e(r.module)} <small class="verdict">{_e(r.status)}</small></h2>',
        f"<p>mode {_e(r.mode)}, seeds {_e(r.seeds)}, wall time {r.wall_time_s:.1f} s</p>",
    ]
    if r.deviations:
        parts.append(
            "<p>Deviations from the paper:</p><ul>"
            + "".join(f"<li>{_e(d)}</li>" for d in r.deviations)
            + "</ul>"
        )
    if r.error:
        parts.append(f"<pre>{_e(r.error)}</pre>")
    for fig in r.figures:
        src = f"{r.module}/{fig}"
        parts.append(f'<a href="{_e(src)}"><img src="{_e(src)}" alt="{_e(fig)}"></a>')
    return "\n".join(parts)


def render_html(results: Iterable[Result], title: str = "cvpr24 reproduction report") -> str:
    """The report page for ``results`` as a string."""
    results = sorted(results, key=lambda r: r.module)
    counts: dict[str, int] = {}
    for r in results:
        for c in r.claims:
            counts[c.status] = counts.get(c.status, 0) + 1
        if r.error is not None and not r.claims:
            counts["error"] = counts.get("error", 0) + 1
    summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "no claims"
    rows = [row for r in results for row in _claim_rows(r)]
    now = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>",
            f"<h1>{_e(title)}</h1><p>{_e(summary)} &middot; written {now}</p>",
            '<table id="claims"><thead><tr><th>module</th><th>claim</th><th>paper</th>'
            "<th>measured</th><th>criterion</th><th>notes</th><th>verdict</th></tr></thead><tbody>",
            *rows,
            "</tbody></table>",
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
