"""Check 10: a real headless browser opens the experiment's runs page and finds the check run,
then (when the tracing check passed) the experiment's traces view and finds the check's trace.

With workspaces on, the UI needs the workspace in the page's address (`?workspace=<name>`);
without it, it shows a workspace picker instead of the experiment.

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
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from tasks.libs.checks.context import CheckContext
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


@dataclass
class Page:
    """A page to open and the text that must show on it."""

    route: str  # after '#', e.g. /experiments/1/runs
    text: str
    what: str  # "run <name>", for the reason
    screenshot: Path
    exact: bool = True


def check_web_ui(ctx: CheckContext) -> str:
    browser_path = usable_browser(ctx.browser)
    query = f"?workspace={quote(ctx.workspace)}" if ctx.workspace else ""
    ctx.screenshot = ctx.report_dir / "web-ui.png"
    pages = [Page(f"/experiments/{ctx.experiment_id}/runs{query}", ctx.run_name, f"run {ctx.run_name}", ctx.screenshot)]
    traces_note = ""
    if "tracing" in ctx.passed:
        # The traces view lists each trace with its input (tags sit in a column off to the side).
        pages.append(
            Page(
                f"/experiments/{ctx.experiment_id}/traces{query}",
                ctx.trace_name,
                f"trace {ctx.trace_ids[0]}",
                ctx.report_dir / "web-ui-traces.png",
                exact=False,
            )
        )
    else:
        traces_note = "; traces view not checked (the tracing check did not pass)"
    ca = ctx.ca_file if ctx.url.startswith("https:") else None
    if ca and shutil.which("certutil") is None:
        raise CheckSkipped(f"Chromium trusts {ca} through an NSS database made with certutil: inv deps (libnss3-tools)")
    seconds = open_and_find(ctx.url, pages, browser_path, ca_file=ca)
    labels = ("experiment runs page until the run shows", "experiment traces view until the trace shows")
    for label, took in zip(labels, seconds):
        ctx.latencies.append(Latency("UI page", label, took))
    shown = "; ".join(f"{p.what} shown on #{p.route} (screenshot {p.screenshot.name})" for p in pages)
    return shown + traces_note


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
    url: str, pages: list[Page], browser_path: str, *, ca_file: str | None = None, timeout_ms: int = FIND_TIMEOUT_MS
) -> list[float]:
    """Load each page in one browser, wait until its text is visible, save a screenshot; the load times.

    A page that never shows its text still gets its screenshot: it is the best clue to why.
    ca_file: the CA an https page's certificate must chain to (besides the system's roots).
    """
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import sync_playwright

    seconds = []
    with sync_playwright() as pw, trusting_home(ca_file) as env:
        try:
            browser = pw.chromium.launch(executable_path=browser_path, headless=True, args=BROWSER_ARGS, env=env)
        except PlaywrightError as exc:
            raise CheckFailed(f"browser {browser_path} did not start: {_first_line(exc)}") from None
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            for wanted in pages:
                page_url = f"{url}/#{wanted.route}"
                start = time.perf_counter()
                try:
                    response = page.goto(page_url, wait_until="domcontentloaded", timeout=timeout_ms)
                except PlaywrightError as exc:
                    raise CheckFailed(f"browser could not open {page_url}: {_first_line(exc)}") from None
                if response is not None and not response.ok:
                    raise CheckFailed(f"{page_url} answered HTTP {response.status}")
                try:
                    page.get_by_text(wanted.text, exact=wanted.exact).first.wait_for(
                        state="visible", timeout=timeout_ms
                    )
                except PlaywrightTimeout:
                    _save(page, wanted.screenshot)
                    raise CheckFailed(
                        f"{wanted.what} not shown on #{wanted.route} within {timeout_ms // 1000} s "
                        f"(see {wanted.screenshot.name})"
                    ) from None
                seconds.append(time.perf_counter() - start)
                _save(page, wanted.screenshot)
            return seconds
        finally:
            browser.close()


def _save(page, screenshot: Path) -> None:
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(screenshot))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__
