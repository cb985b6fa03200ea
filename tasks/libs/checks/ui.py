"""Check 8: a real headless browser opens the experiment's runs page and finds the check run.

Over https the browser verifies the certificate as any browser does: chain, dates and host
name. It trusts a private CA (ctx.ca_file) the way Chromium on Linux trusts one a user
installs: from the NSS database in $HOME/.pki/nssdb, here a throwaway HOME whose database
holds only that CA (made with NSS's certutil, Debian package libnss3-tools). Certificate
errors are never ignored, so an expired or wrong-host certificate fails the check.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from tasks.libs.checks.runner import CheckContext
from tasks.libs.reporting.records import CheckFailed, CheckSkipped, Latency

BROWSER_ARGS = [
    "--no-sandbox",  # we run as root
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
FIND_TIMEOUT_MS = 30_000  # the first load of the React app takes 2-3 s here; allow for a busy machine


def check_web_ui(ctx: CheckContext) -> str:
    browser_path = usable_browser(ctx.browser)
    page_url = f"{ctx.url}/#/experiments/{ctx.experiment_id}/runs"
    ctx.screenshot = ctx.report_dir / "web-ui.png"
    ca = ctx.ca_file if page_url.startswith("https:") else None
    if ca and shutil.which("certutil") is None:
        raise CheckSkipped(f"Chromium trusts {ca} through an NSS database made with certutil: inv deps (libnss3-tools)")
    seconds = open_and_find(page_url, ctx.run_name, browser_path, ctx.screenshot, ca_file=ca)
    ctx.latencies.append(Latency("UI page", "experiment runs page until the run shows", seconds))
    return f"run {ctx.run_name} shown on #/experiments/{ctx.experiment_id}/runs; screenshot {ctx.screenshot.name}"


def usable_browser(browser: str | None) -> str:
    """The browser executable to drive, or CheckSkipped saying why there is none."""
    if not browser:
        raise CheckSkipped("browser check turned off (no browser given)")
    if not (os.path.isfile(browser) and os.access(browser, os.X_OK)):
        raise CheckSkipped(f"no browser at {browser} (apt-get install chromium)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        raise CheckSkipped("the playwright Python package is not installed (pip install playwright)") from None
    return browser


@contextlib.contextmanager
def trusting_home(ca_file: str | None) -> Iterator[dict[str, str | float | bool] | None]:
    """The browser's environment: a HOME whose NSS database trusts ca_file alone (None: as it is)."""
    if not ca_file:
        yield None
        return
    home = Path(tempfile.mkdtemp(prefix="mlflow-ops-browser-"))
    try:
        nssdb = home / ".pki" / "nssdb"
        nssdb.mkdir(parents=True, mode=0o700)
        for args in (["-N", "--empty-password"], ["-A", "-n", "mlflow-ops-ca", "-t", "C,,", "-i", ca_file]):
            done = subprocess.run(["certutil", "-d", f"sql:{nssdb}", *args], capture_output=True, text=True, timeout=30)
            if done.returncode != 0:
                raise CheckFailed(f"certutil could not add {ca_file} for the browser: {done.stderr.strip()[:200]}")
        yield {**os.environ, "HOME": str(home)}
    finally:
        shutil.rmtree(home, ignore_errors=True)


def open_and_find(
    page_url: str,
    run_name: str,
    browser_path: str,
    screenshot: Path,
    *,
    ca_file: str | None = None,
    timeout_ms: int = FIND_TIMEOUT_MS,
) -> float:
    """Load page_url, wait until run_name is visible, save a screenshot; return the load time.

    A page that never shows the run still gets its screenshot: it is the best clue to why.
    ca_file: the CA an https page's certificate must chain to (besides the system's roots).
    """
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw, trusting_home(ca_file) as env:
        try:
            browser = pw.chromium.launch(executable_path=browser_path, headless=True, args=BROWSER_ARGS, env=env)
        except PlaywrightError as exc:
            raise CheckFailed(f"browser {browser_path} did not start: {_first_line(exc)}") from None
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            start = time.perf_counter()
            try:
                response = page.goto(page_url, wait_until="domcontentloaded", timeout=timeout_ms)
            except PlaywrightError as exc:
                raise CheckFailed(f"browser could not open {page_url}: {_first_line(exc)}") from None
            if response is not None and not response.ok:
                raise CheckFailed(f"{page_url} answered HTTP {response.status}")
            try:
                page.get_by_text(run_name, exact=True).first.wait_for(state="visible", timeout=timeout_ms)
            except PlaywrightTimeout:
                _save(page, screenshot)
                raise CheckFailed(
                    f"run {run_name} not shown on the experiment page within {timeout_ms // 1000} s "
                    f"(see {screenshot.name})"
                ) from None
            seconds = time.perf_counter() - start
            _save(page, screenshot)
            return seconds
        finally:
            browser.close()


def _save(page, screenshot: Path) -> None:
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(screenshot))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__
