"""report.html in a real headless browser: Debian's Chromium driven by its own chromedriver
(selenium, no driver download). The page is opened from file:// with every host name
unresolvable, so any network fetch would fail and log a console error."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from tests.helpers.jobs import write_job
from worker.job import load_job
from worker.pipeline import run

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


def _browser(tmp: Path):
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        pytest.skip(
            "no Chromium here: apt-get install chromium chromium-driver (.ci/run installs them)"
        )
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--host-resolver-rules=MAP * ~NOTFOUND",  # no host resolves: no network at all
        "--window-size=1280,2000",
        f"--user-data-dir={tmp / 'chromium-profile'}",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A small image job (the demo's pictures, 8 per set, no adaptation) run end to end."""
    from worker.demo import make_demo_data

    folder = tmp_path_factory.mktemp("html")
    make_demo_data(folder / "data", per_set=8)
    names = ["S1", "S2", "S3"]
    job = {
        "seed": 0,
        "model": {"name": "hog", "image_size": 64},
        "cache": {"enabled": False},
        "pca": {"dims": 8, "sweep": [4, 8]},
        "datasets": {
            "primary": {"name": "P", "path": "data/P/images"},
            "secondary": [{"name": n, "path": f"data/{n}/images"} for n in names],
        },
        "metrics": {"null_repeats": 3, "mmd_permutations": 50},
        "selection": {"strategy": ["band", "kcenter"], "counts": [1, 3]},
    }
    result = run(load_job(write_job(folder, job)), out_dir=str(folder / "out"))
    return Path(result.run_dir)


def test_report_html_sits_beside_the_pdf_and_needs_no_network(run_dir):
    html = (run_dir / "report.html").read_text(encoding="utf-8")
    assert (run_dir / "report.pdf").exists() and (run_dir / "report.json").exists()
    # nothing is loaded from elsewhere: no element names an http(s) source
    assert not re.search(
        r"<(?:script|link|img|iframe)\b[^>]*\b(?:src|href)=\"?(?:https?:)?//", html
    )
    assert html.count("data:image/jpeg;base64,") >= 3 * 8  # the browser's thumbnails
    assert (run_dir.parent.parent / "report.html").resolve() == (run_dir / "report.html")


def _console_errors(driver) -> list[dict]:
    return [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]


def test_report_html_in_chromium(run_dir, tmp_path):
    report = json.loads((run_dir / "report.json").read_text())
    driver = _browser(tmp_path)
    try:
        driver.get((run_dir / "report.html").as_uri())
        driver.implicitly_wait(5)
        shot = tmp_path / "report_html.png"
        assert _console_errors(driver) == []
        from selenium.webdriver.common.by import By

        # the decision table lists every secondary in ranking order, then sorts on a click
        def names() -> list[str]:
            rows = driver.find_elements(By.CSS_SELECTOR, "#decision-table tbody tr")
            return [r.get_attribute("data-name") for r in rows]

        assert names() == report["ranking"]["order"]
        heads = driver.find_elements(By.CSS_SELECTOR, "#decision-table thead th")
        o_dist = {s["name"]: s["o_dist_mean"] for s in report["secondaries"]}
        column = next(h for h in heads if h.text.startswith("o_dist_mean"))
        column.click()
        assert names() == sorted(o_dist, key=o_dist.get)
        column.click()
        assert names() == sorted(o_dist, key=o_dist.get, reverse=True)
        driver.find_element(By.ID, "filter").send_keys("S2")
        shown = [r for r in driver.find_elements(By.CSS_SELECTOR, "#decision-table tbody tr")]
        assert [r.get_attribute("data-name") for r in shown if r.is_displayed()] == ["S2"]

        # a secondary's thumbnails, most novel first
        from selenium.webdriver.support.ui import Select

        farthest = report["ranking"]["order"][-1]
        Select(driver.find_element(By.ID, "secondary")).select_by_value(farthest)
        thumbs = driver.find_elements(By.CSS_SELECTOR, "#thumbs .thumb")
        images = next(s for s in report["secondaries"] if s["name"] == farthest)["images"]
        assert images[0].get("novelty") is not None
        # most novel first; images as novel as each other: the larger I_dist first
        want = [im["id"] for im in sorted(images, key=lambda im: (-im["novelty"], -im["i_dist"]))]
        got = [t.get_attribute("data-id") for t in thumbs]
        assert got == want[: len(got)] and len(got) == len(images)
        assert all(
            t.find_element(By.TAG_NAME, "img").get_attribute("src").startswith("data:image/jpeg")
            for t in thumbs
        )

        # the mouse over a point of the scatter shows its image
        from selenium.webdriver.common.action_chains import ActionChains

        plot = driver.find_element(By.ID, "plot-scatter")
        driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", plot)
        dx, dy = driver.execute_script(
            "var gd = arguments[0], fl = gd._fullLayout, t = gd.data[1],"
            " r = gd.getBoundingClientRect();"
            "return [fl.xaxis.d2p(t.x[0]) + fl._size.l - r.width / 2,"
            " fl.yaxis.d2p(t.y[0]) + fl._size.t - r.height / 2];",
            plot,
        )
        ActionChains(driver).move_to_element_with_offset(plot, int(dx), int(dy)).perform()
        hover = driver.find_element(By.ID, "hover")
        assert hover.is_displayed()
        src = hover.find_element(By.TAG_NAME, "img").get_attribute("src")
        assert src.startswith("data:image/jpeg")

        driver.save_screenshot(str(shot))
        print(f"report.html screenshot: {shot}")
        assert shot.stat().st_size > 10_000
        assert _console_errors(driver) == []
    finally:
        driver.quit()


def test_report_html_plots_the_matrix_with_groups_and_the_history():
    """report.html's matrix heatmap: the report's matrix in clustering order, each dataset's
    group in its label; its history plot: one line per secondary, one point per run."""
    from types import SimpleNamespace

    import numpy as np

    from worker.report.interactive import history_plot, matrix_plot
    from worker.results import DatasetMatrix, Groups, GroupSummary
    from worker.results.history import History, HistoryPoint, SecondaryHistory

    m = np.array([[0, 4, 1], [4, 0, 4], [1, 4, 0]], dtype=float)
    names = ["a", "b", "c"]
    block = DatasetMatrix(
        names=names, o_dist_mean=(m / 2).tolist(), pca="pair", dims=None, order=["a", "c", "b"],
        nearest={"a": "c", "b": "a", "c": "a"}, energy=m.tolist(), ordered_by="energy",
    )  # fmt: skip
    groups = Groups.model_construct(
        groups=[GroupSummary.model_construct(name="g", members=["a", "c"])]
    )
    spec = matrix_plot(SimpleNamespace(matrix=block, groups=groups))
    (trace,) = spec["data"]
    assert trace["x"] == trace["y"] == ["a [g]", "c [g]", "b"]
    assert trace["z"] == [[0.0, 1.0, 4.0], [1.0, 0.0, 4.0], [4.0, 4.0, 0.0]]
    assert "energy" in spec["layout"]["title"]["text"].lower()

    def point(run: str, value: float | None) -> HistoryPoint:
        return HistoryPoint.model_construct(run_id=run, finished=None, o_dist_mean=value)

    history = History.model_construct(
        secondaries=[
            SecondaryHistory.model_construct(
                name="S1", series=[point("r1", 1.0), point("r2", 1.5)]
            ),
            SecondaryHistory.model_construct(name="S2", series=[point("r2", 3.0)]),
        ]
    )
    spec = history_plot(SimpleNamespace(history=history))
    assert [(t["name"], t["x"], t["y"]) for t in spec["data"]] == [
        ("S1", ["r1", "r2"], [1.0, 1.5]),
        ("S2", ["r2"], [3.0]),
    ]
    assert history_plot(SimpleNamespace(history=None)) is None
