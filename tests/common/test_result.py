import math

import pytest

from cvpr24.common import Claim, Measurement, Result


def _result() -> Result:
    return Result(
        "demo",
        claims=[
            Claim.compare(
                "C1",
                "error is U-shaped",
                [0.9, 1.1, 1.0],
                ">=",
                0.8,
                reason="10% slack",
                paper_value=1.0,
                unit="x",
            ),
            Claim.verdict(
                "C2",
                "two checks hold",
                False,
                criterion="a and b",
                comparison="a=True, b=False",
                measured=Measurement.of([3.0]),
            ),
            Claim.not_tested("C3", "needs a precondition", reason="precondition failed"),
        ],
        seeds=[0, 1, 2],
        wall_time_s=12.5,
        figures=["curve.png"],
        deviations=["smaller data"],
    )


def test_json_round_trip_is_lossless():
    r = _result()
    back = Result.from_json(r.to_json())
    assert back == r
    assert back.status == "failed"
    assert isinstance(back.claims[0].measured, Measurement)


def test_save_and_load(tmp_path):
    r = _result()
    r.save(tmp_path / "m" / "result.json")
    assert Result.load(tmp_path / "m" / "result.json") == r
    assert not [p for p in (tmp_path / "m").iterdir() if p.name != "result.json"]  # no temp files


def test_measurement_statistics():
    m = Measurement.of([1.0, 2.0, 3.0])
    assert m.mean == 2.0
    assert m.std == pytest.approx(math.sqrt(2 / 3))
    assert "n=3" in str(m)
    with pytest.raises(ValueError, match="values"):
        Measurement.of([])


@pytest.mark.parametrize(
    ("values", "op", "threshold", "statistic", "expected"),
    [
        ([1, 2, 3], ">=", 2, "mean", "passed"),
        ([1, 2, 3], ">", 2, "mean", "failed"),
        ([1, 2, 3], "<", 2.5, "mean", "passed"),
        ([1, 2, 30], "<=", 2, "median", "passed"),
        ([1, 2, 3], ">=", 2, "all", "failed"),
        ([1, 2, 3], ">=", 3, "any", "passed"),
        ([float("nan")], ">=", 0, "mean", "failed"),
        ([float("nan"), 5.0], ">=", 0, "all", "failed"),
    ],
)
def test_compare_applies_the_stated_comparison(values, op, threshold, statistic, expected):
    c = Claim.compare("C", "s", values, op, threshold, reason="r", statistic=statistic)
    assert c.status == expected
    assert op in c.criterion and "r" in c.criterion
    assert c.comparison  # the numbers actually compared are recorded


def test_bad_claim_arguments():
    with pytest.raises(ValueError, match="op"):
        Claim.compare("C", "s", [1], "==", 1, reason="r")
    with pytest.raises(ValueError, match="statistic"):
        Claim.compare("C", "s", [1], ">=", 1, reason="r", statistic="max")
    with pytest.raises(ValueError, match="status"):
        Claim("C", "s", "crit", "maybe")


def test_status_aggregation():
    passed = Claim.compare("A", "s", [1], ">=", 0, reason="r")
    failed = Claim.compare("B", "s", [1], ">=", 2, reason="r")
    assert Result("m", claims=[passed]).status == "passed"
    assert Result("m", claims=[passed, failed]).status == "failed"
    assert Result("m", claims=[passed], error="Traceback").status == "error"
    assert Result("m").status == "not tested"
