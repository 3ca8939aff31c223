from html.parser import HTMLParser

from cvpr24.common import Claim, Result
from cvpr24.common.report import render_html, write_report


class _Tables(HTMLParser):
    """Collects the rows of the claims table (cells as text) and every src/href."""

    def __init__(self):
        super().__init__()
        self.rows, self.links, self._in_table, self._row, self._cell = [], [], False, None, None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.links += [attrs[k] for k in ("src", "href") if k in attrs]
        if tag == "table" and attrs.get("id") == "claims":
            self._in_table = True
        elif self._in_table and tag == "tr":
            self._row = []
        elif self._row is not None and tag == "td":
            self._cell = []

    def handle_endtag(self, tag):
        if tag == "table":
            self._in_table = False
        elif tag == "td" and self._cell is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tr" and self._row is not None:
            if self._row:
                self.rows.append(self._row)
            self._row = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def _results():
    return [
        Result(
            "alpha",
            claims=[
                Claim.compare(
                    "C1",
                    "ratio holds <script>",
                    [1.2, 1.3],
                    ">=",
                    1.0,
                    reason="r",
                    paper_value=1.25,
                ),
                Claim.compare("C2", "small error", [0.5], "<", 0.1, reason="r"),
            ],
            figures=["fig.png"],
        ),
        Result("beta", claims=[Claim.not_tested("C1", "needs precondition", reason="no")]),
        Result("gamma", error="Traceback (most recent call last):\nRuntimeError: boom"),
    ]


def _parse(text):
    p = _Tables()
    p.feed(text)
    return p


def test_every_claim_appears_with_its_verdict():
    p = _parse(render_html(_results()))
    table = {(row[0], row[1].split()[0]): row[-1] for row in p.rows}
    assert table[("alpha", "C1")] == "passed"
    assert table[("alpha", "C2")] == "failed"
    assert table[("beta", "C1")] == "not tested"
    gamma = [row for row in p.rows if row[0] == "gamma"]
    assert len(gamma) == 1 and gamma[0][-1] == "error" and "boom" in gamma[0][1]
    assert len(p.rows) == 4


def test_measured_values_and_escaping():
    text = render_html(_results())
    row = next(r for r in _parse(text).rows if r[0] == "alpha" and r[1].startswith("C1"))
    assert "<script>" in row[1]  # shown as text ...
    assert "<script>" not in text  # ... because it was escaped
    assert row[2] == "1.25" and row[3].startswith("1.25 ± 0.05")


def test_page_is_self_contained(tmp_path):
    path = write_report(tmp_path, _results())
    links = _parse(path.read_text()).links
    assert "alpha/fig.png" in links
    assert not [u for u in links if "://" in u or u.startswith("//")]


def test_report_reads_results_from_disk(tmp_path):
    for r in _results():
        r.save(tmp_path / r.module / "result.json")
    rows = _parse(write_report(tmp_path).read_text()).rows
    assert {row[0] for row in rows} == {"alpha", "beta", "gamma"}
