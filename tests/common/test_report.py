from html.parser import HTMLParser

from cvpr24.common import Claim, Result
from cvpr24.common.report import claim_counts, render_html, write_report


class _Page(HTMLParser):
    """The summary rows and the claim rows of each module (cells as text), and every src/href."""

    def __init__(self):
        super().__init__()
        self.summary, self.claims, self.links = [], {}, []
        self._table = self._module = self._row = self._cell = None
        self._details = 0

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.links += [attrs[k] for k in ("src", "href") if k in attrs]
        if tag == "section":
            self._module = attrs.get("data-module")
        elif tag == "table":
            self._table = attrs.get("id") or attrs.get("class")
        elif tag == "tr" and self._table:
            self._row = []
        elif tag == "td" and self._row is not None:
            self._cell = []
        elif tag == "details":
            self._details += 1

    def handle_endtag(self, tag):
        if tag == "table":
            self._table = None
        elif tag == "details":
            self._details -= 1
        elif tag == "td" and self._cell is not None:
            self._row.append(" ".join("".join(self._cell).split()))
            self._cell = None
        elif tag == "tr" and self._row:
            if self._table == "summary":
                self.summary.append(self._row)
            elif self._table == "claims":
                self.claims.setdefault(self._module, []).append(self._row)
            self._row = None

    def handle_data(self, data):
        if self._cell is not None and not self._details:  # folded text is not the row's own
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
                    reason="why this threshold",
                    paper_value=1.25,
                    notes="a long explanation",
                ),
                Claim.compare("C2", "C2: small error", [0.5], "<", 0.1, reason="r"),
            ],
            seeds=[0, 1],
            wall_time_s=12.3,
            figures=["loss_curve.png"],
        ),
        Result("beta", claims=[Claim.not_tested("C1", "needs precondition", reason="no")]),
        Result("gamma", error="Traceback (most recent call last):\nRuntimeError: boom"),
        Result(
            "delta",
            claims=[Claim.compare("C1", "first seed", [0.9], ">=", 0.5, reason="r")],
            error="exceeded its time budget of 5 s and was stopped.",
            partial=True,
        ),
    ]


def _parse(text):
    p = _Page()
    p.feed(text)
    return p


def test_summary_has_one_row_per_module_with_its_counts():
    page = _parse(render_html(_results()))
    rows = {r[0]: r for r in page.summary}
    assert list(rows) == ["alpha", "beta", "delta", "gamma"]  # sorted by module
    # module, verdict, passed, failed, not tested, wall time, mode, seeds
    assert rows["alpha"][1:6] == ["failed", "1", "1", "0", "12 s"]
    assert rows["alpha"][7] == "0, 1"
    assert rows["beta"][1:5] == ["not tested", "0", "0", "1"]
    assert rows["gamma"][1] == "error"
    assert rows["delta"][1] == "error partial" and rows["delta"][2] == "1"


def test_claim_rows_are_short_and_the_reasoning_is_folded():
    text = render_html(_results())
    page = _parse(text)
    c1, c2 = page.claims["alpha"]
    assert c1[0] == "C1 ratio holds <script>"  # the statement, shown as text ...
    assert "<script>" not in text  # ... because it was escaped
    assert c1[1].startswith("1.25 ± 0.05") and c1[3] == "passed"
    assert c2[0] == "C2 small error" and c2[3] == "failed"  # the name is not said twice
    assert page.claims["beta"][0][3] == "not tested"
    for folded in ("why this threshold", "a long explanation", "1.2, 1.3", "Paper.</b> 1.25"):
        assert folded in text
        assert not any(folded in cell for row in page.claims["alpha"] for cell in row)


def test_counts_match_the_results():
    results = _results()
    assert claim_counts(results[0]) == {"passed": 1, "failed": 1, "error": 0, "not tested": 0}
    assert claim_counts(results[2])["error"] == 1  # a module that produced no claim


def test_page_is_self_contained_and_captions_every_figure(tmp_path):
    text = write_report(tmp_path, _results()).read_text()
    links = _parse(text).links
    assert "alpha/loss_curve.png" in links
    assert not [u for u in links if "://" in u or u.startswith("//")]
    assert "<script" not in text and "<figcaption>loss curve</figcaption>" in text


def test_report_reads_results_from_disk(tmp_path):
    for r in _results():
        r.save(tmp_path / r.module / "result.json")
    page = _parse(write_report(tmp_path).read_text())
    assert {row[0] for row in page.summary} == {"alpha", "beta", "gamma", "delta"}
