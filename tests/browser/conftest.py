"""Fixtures for the browser tests: headless Chromium (the Debian package) driven by Playwright's sync API.

Chromium must be installed at /usr/bin/chromium (`apt-get install chromium`): without it these tests fail,
they do not skip. Playwright's own browser downloads are never used.

tests/browser is a package (it has an __init__.py) so that this file is imported as `browser.conftest` and
`from conftest import StackFactory` keeps meaning tests/conftest.py everywhere.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, Playwright, sync_playwright

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def pw() -> Iterator[Playwright]:
    assert CHROMIUM.exists(), f"{CHROMIUM} is missing: install the Debian package `chromium` (apt-get install chromium)"
    with sync_playwright() as p:
        yield p


@pytest.fixture(scope="module")
def browser(pw: Playwright) -> Iterator[Browser]:
    browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
    yield browser
    browser.close()


class PageErrors:
    """JavaScript exceptions and console errors seen by a page."""

    def __init__(self) -> None:
        self.exceptions: list[str] = []
        self.console: list[str] = []

    def on_console(self, msg: ConsoleMessage) -> None:
        if msg.type == "error":
            self.console.append(msg.text)


@pytest.fixture
def page_errors() -> PageErrors:
    return PageErrors()


@pytest.fixture
def page(browser: Browser, page_errors: PageErrors) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1440, "height": 900})
    page = context.new_page()
    page.set_default_timeout(15_000)
    page.on("pageerror", lambda exc: page_errors.exceptions.append(str(exc)))
    page.on("console", page_errors.on_console)
    yield page
    context.close()
    assert page_errors.exceptions == [], "no JavaScript errors"
