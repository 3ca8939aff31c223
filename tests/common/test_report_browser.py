"""The report page in a real browser: headless Chromium, driven through selenium.

A report is built by a real tiny reproduction (hcc's quick run) plus records that stress the
layout (long unbroken words, many claims, an error, a partial run). At 1280 px and at 800 px the
page must not scroll sideways, every image must have loaded, and the summary must count what the
``result.json`` files hold. A screenshot of each width is saved beside the report.

Needs Debian's ``chromium`` and ``chromium-driver`` and the ``selenium`` package; ``.ci/run``
installs them when missing, so CI runs this test; elsewhere it skips and says how to install.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cvpr24.common import Claim, Result
from cvpr24.common.report import claim_counts, load_results, write_report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
INSTALL = "apt-get install -y chromium chromium-driver && pip install selenium"

webdriver = pytest.importorskip("selenium.webdriver", reason=f"selenium missing: {INSTALL}")
if CHROMIUM is None or CHROMEDRIVER is None:
    pytest.skip(f"chromium or chromedriver missing: {INSTALL}", allow_module_level=True)


def _stress_results(png: Path) -> list[Result]:
    word = "unbroken_" * 40  # a 360-character token: must wrap, not widen the page
    claims = [
        Claim.compare(
            f"C{i}",
            f"claim {i} {word}",
            [0.1 * i, 0.1 * i + 0.05, 0.1 * i - 0.02],
            ">=",
            0.3,
            reason=f"a long reason {word}",
            notes="notes " * 200,
            paper_value=word,
        )
        for i in range(1, 9)
    ]
    return [
        Result("stress", claims=claims, seeds=[0, 1, 2], wall_time_s=3.0, figures=[png.name]),
        Result("crashed", error="Traceback (most recent call last):\n" + word * 3),
        Result(
            "stopped",
            claims=claims[:1],
            partial=True,
            error="exceeded its time budget of 5 s and was stopped.",
        ),
    ]


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("reports")
    subprocess.run(
        [sys.executable, "-m", "cvpr24.cli", "reproduce", "hcc", "--out", str(out)],
        check=True,
        capture_output=True,
        timeout=600,
    )
    hcc = Result.load(out / "hcc" / "result.json")
    assert hcc.figures and not hcc.error, "the tiny reproduction must produce figures"
    png = out / "hcc" / hcc.figures[0]
    for r in _stress_results(png):
        (out / r.module).mkdir()
        if r.figures:
            shutil.copy(png, out / r.module / png.name)
        r.save(out / r.module / "result.json")
    return write_report(out)


@pytest.fixture(scope="module")
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--no-first-run",
    ):
        options.add_argument(flag)
    service = webdriver.ChromeService(executable_path=CHROMEDRIVER)
    driver = webdriver.Chrome(options=options, service=service)
    yield driver
    driver.quit()


@pytest.mark.parametrize("width", [1280, 800])
def test_report_fits_the_window_and_every_image_loads(report, browser, width):
    browser.set_window_size(width, 900)
    browser.get(report.as_uri())
    inner = browser.execute_script("return window.innerWidth")
    scroll = browser.execute_script("return document.documentElement.scrollWidth")
    assert scroll <= inner, f"horizontal overflow at {width} px: {scroll} > {inner}"
    images = browser.execute_script(
        "return Array.from(document.images).map(i => [i.src, i.complete && i.naturalWidth > 0])"
    )
    assert images and all(ok for _, ok in images), images
    browser.save_screenshot(str(report.parent / f"screenshot_{width}.png"))


def test_summary_counts_equal_the_result_files(report, browser):
    browser.get(report.as_uri())
    rows = browser.execute_script(
        "return Array.from(document.querySelectorAll('#summary tbody tr'))"
        ".map(r => Array.from(r.cells).map(c => c.textContent.trim()))"
    )
    shown = {r[0]: (int(r[2]), int(r[3]), int(r[4])) for r in rows}
    expected = {
        r.module: tuple(claim_counts(r)[s] for s in ("passed", "failed", "not tested"))
        for r in load_results(report.parent)
    }
    assert shown == expected and set(shown) == {"hcc", "stress", "crashed", "stopped"}
