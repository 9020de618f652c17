"""The viewer in a real headless Chromium (Debian's `chromium` and `chromium-driver`, driven by
selenium; never a downloaded browser): the runs page, filtering, a run's charts holding exactly
what was tracked, live growth without a reload, and the token. Screenshots go to docs/."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import Daemon, wait_for
from harness import CHROMEDRIVER, CHROMIUM, chromium

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER),
                                 reason="Debian chromium and chromium-driver are not installed "
                                        "(make test installs them as root)")]
DOCS = Path(__file__).parent.parent / "docs"
TRAIN = """
    import math, random
    from magnus import step, track_this, flush
    random.seed({seed})
    with step("train"):
        for i in range(1, 1001):
            track_this(step=i, loss=math.exp(-i / 300) + {offset} + random.random() * 0.02,
                       acc=1 - math.exp(-i / 250))
        track_this(lr=0.001, optimizer="adam")
    assert flush(10)
"""


@pytest.fixture
def browser() -> Iterator[Any]:
    driver = chromium()
    yield driver
    driver.quit()


@pytest.fixture
def viewer(make_daemon: Callable[..., Daemon]) -> tuple[Daemon, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    d = make_daemon("", extra_env={"MAGNUS_UI_LISTEN": f"127.0.0.1:{port}"}).start()
    return d, d.cli("ui", "--print-url").stdout.strip()


def rows(browser: Any) -> list[str]:
    return [r.get_attribute("data-run") for r in
            browser.find_elements("css selector", "#runs tbody tr")]


def test_runs_page_lists_and_filters_runs_made_by_real_clients(viewer: tuple[Daemon, str],
                                                               browser: Any) -> None:
    d, url = viewer
    for run, tag, offset in (("resnet-a", "vision", 0.0), ("resnet-b", "vision", 0.2),
                             ("bert-a", "nlp", 0.1)):
        d.client(TRAIN.format(seed=len(run), offset=offset), MAGNUS_RUN_ID=run,
                 MAGNUS_RUN_TAG=tag)
    browser.get(url)
    wait_for(lambda: sorted(rows(browser)) == ["bert-a", "resnet-a", "resnet-b"],
             what="three runs listed")
    statuses = {r.get_attribute("data-run"): r.find_element("css selector", ".status").text
                for r in browser.find_elements("css selector", "#runs tbody tr")}
    assert statuses == {"bert-a": "SUCCESS", "resnet-a": "SUCCESS", "resnet-b": "SUCCESS"}
    DOCS.mkdir(exist_ok=True)
    browser.save_screenshot(str(DOCS / "viewer-runs.png"))
    from selenium.webdriver.support.ui import Select

    Select(browser.find_element("id", "tag")).select_by_visible_text("vision")
    wait_for(lambda: sorted(rows(browser)) == ["resnet-a", "resnet-b"], what="filtered by tag")
    browser.find_element("id", "filter").send_keys("-b")
    wait_for(lambda: rows(browser) == ["resnet-b"], what="filtered by text")


def chart_data(browser: Any, name: str) -> dict[str, Any]:
    return browser.execute_script(  # type: ignore[no-any-return]
        "const c = window.magnusCharts && window.magnusCharts[arguments[0]];"
        "if (!c) return null;"
        "const out = {}; for (const [id, d] of Object.entries(c.runs))"
        " out[id] = {steps: d.steps, values: d.values, drawn: !!c.plot};"
        "return out;", name)


def test_a_run_page_draws_exactly_what_was_tracked_and_overlays_compared_runs(
        viewer: tuple[Daemon, str], browser: Any) -> None:
    d, url = viewer
    for run, offset in (("cmp-a", 0.0), ("cmp-b", 0.25)):
        d.client(TRAIN.format(seed=1, offset=offset), MAGNUS_RUN_ID=run, MAGNUS_RUN_TAG="t")
    base, token = url.split("?")
    browser.get(f"{base}runs/cmp-a?compare=cmp-b&{token}")
    data = wait_for(lambda: (c := chart_data(browser, "train/loss")) and len(c) == 2
                    and all(x["drawn"] for x in c.values()) and c, what="both curves drawn")
    want = {run: d.show(run)["steps"]["train"]["user_defined_metrics"]  # type: ignore[index]
            for run in ("cmp-a", "cmp-b")}
    for run, series in data.items():
        assert series["steps"] == list(range(1, 1001))
        assert series["values"] == [want[run][f"loss_{i}"] for i in range(1, 1001)]
    canvases = browser.find_elements("css selector", ".chart canvas")
    assert len(canvases) >= 3  # loss, acc, lr
    table = browser.find_element("id", "compare-table").text
    assert "cmp-a last / min / max" in table and "train/loss" in table
    browser.find_element("id", "smooth").send_keys("\ue014" * 60)  # right arrow: smoothing up
    wait_for(lambda: browser.execute_script(  # x, then a faint raw and a smoothed curve a run
        "return window.magnusCharts['train/loss'].plot.series.length") == 5,
        what="smoothed curves drawn over the raw ones")
    DOCS.mkdir(exist_ok=True)
    browser.save_screenshot(str(DOCS / "viewer-run.png"))


def test_a_live_client_makes_the_chart_grow_without_a_reload(viewer: tuple[Daemon, str],
                                                              browser: Any) -> None:
    d, url = viewer
    d.client("from magnus import track_this, flush\ntrack_this(step=1, loss=1.0)\n"
             "assert flush(10)", MAGNUS_RUN_ID="live-run")
    base, token = url.split("?")
    browser.get(f"{base}runs/live-run?{token}")
    wait_for(lambda: (c := chart_data(browser, "main/loss")) and c["live-run"]["steps"] == [1],
             what="the first point drawn")
    browser.execute_script("window.__marker = 42")  # gone if the page reloads
    p = d.popen("""
        import time
        from magnus import track_this, flush
        for i in range(2, 202):
            track_this(step=i, loss=1.0 / i)
            if i % 20 == 0:
                flush(5)
                time.sleep(0.05)
        assert flush(10)
    """, MAGNUS_RUN_ID="live-run")
    got = wait_for(lambda: (c := chart_data(browser, "main/loss"))
                   and len(c["live-run"]["steps"]) == 201 and c, timeout=60,
                   what="the chart grown to 201 points")
    p.communicate(timeout=30)
    assert got["live-run"]["steps"] == list(range(1, 202))
    assert got["live-run"]["values"][1:] == [1.0 / i for i in range(2, 202)]
    assert browser.execute_script("return window.__marker") == 42


def test_the_browser_needs_the_token(viewer: tuple[Daemon, str], browser: Any) -> None:
    _, url = viewer
    base = url.split("?")[0]
    browser.get(base)
    assert "token is needed" in browser.page_source
    browser.get(base + "api/runs")
    assert "token is needed" in browser.page_source
    browser.get(url)  # the link sets the cookie; later pages need no token in the URL
    browser.get(base + "api/runs")
    assert "token is needed" not in browser.page_source
