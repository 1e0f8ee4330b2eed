"""The report in a real browser: headless Chromium (Debian's package, driven by Playwright) opens the file with
every network request refused, shows every picture and table, and takes a screenshot.

Skipped without /usr/bin/chromium unless APIS_REQUIRE_BROWSER=1 (the `chromium` fixture, tests/conftest.py).
APIS_REPORT_SCREENSHOT=PATH also saves the screenshot there.
"""

import os
import shutil

from apis.report.html import write_report


def test_the_report_renders_offline_in_chromium(finished_runs, tmp_path, chromium):
    from playwright.sync_api import sync_playwright

    runs = [finished_runs[name][0].output_dir for name in ("entropy", "random")]
    report = write_report(runs, tmp_path / "report.html", gallery_images=1)
    fetched = []

    def offline(route):
        fetched.append(route.request.url)
        if route.request.url.startswith(("file:", "data:")):
            route.continue_()
        else:
            route.abort()

    with sync_playwright() as playwright:
        browser = chromium(playwright)
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.route("**/*", offline)
        page.goto(report.as_uri())
        images = page.eval_on_selector_all("img", "imgs => imgs.map(i => [i.complete, i.naturalWidth])")
        tables = page.eval_on_selector_all("table", "ts => ts.map(t => t.rows.length)")
        screenshot = tmp_path / "report.png"
        page.screenshot(path=str(screenshot), full_page=True)
        browser.close()
    assert [url for url in fetched if not url.startswith(("file:", "data:"))] == []
    assert len(images) == 6 and all(done and width > 300 for done, width in images)
    assert tables == [3, 7]  # runs (header + 2), per-step table (header + 2 strategies x 3 steps)
    assert screenshot.stat().st_size > 100_000
    if os.environ.get("APIS_REPORT_SCREENSHOT"):
        shutil.copy(screenshot, os.environ["APIS_REPORT_SCREENSHOT"])
