"""Headless Chromium (Debian's chromium and chromium-driver) through Selenium, for the
browser tests: the browse page and the OHIF viewer."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


@contextmanager
def chromium(user_data_dir: Path, *, network_log: bool = False) -> Iterator[Any]:
    """A headless Chromium WebDriver; ``network_log`` records the DevTools network
    events (read them with :func:`failed_requests`)."""
    if not Path(CHROMIUM).exists() or not Path(CHROMEDRIVER).exists():
        pytest.fail(
            "headless Chromium is needed: apt-get install chromium chromium-driver "
            "(scripts/run-tests.sh installs them)"
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--enable-unsafe-swiftshader",  # WebGL in software (the OHIF viewer needs it)
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1280,900",
        f"--user-data-dir={user_data_dir}",
    ):
        options.add_argument(arg)
    if network_log:
        options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


class NetworkLog:
    """The requests a page made to one origin, from the DevTools network events of a driver
    made with ``network_log=True``; :meth:`update` reads the events logged since its last
    call (reading drains Chrome's log)."""

    def __init__(self, driver: Any, origin: str) -> None:
        self.driver, self.origin = driver, origin
        self.failed: list[str] = []  # readable lines: status >= 400 or a network/CORS error
        self.answered = 0  # responses received from the origin
        self._urls: dict[str, str] = {}
        self._pending: set[str] = set()

    def forget(self) -> None:
        """Drop what was logged so far (the earlier pages' requests)."""
        self.driver.get_log("performance")

    @property
    def idle(self) -> bool:
        """Whether every request seen has ended (loaded or failed)."""
        return not self._pending

    def update(self) -> NetworkLog:
        for entry in self.driver.get_log("performance"):
            event = json.loads(entry["message"])["message"]
            method, params = event.get("method"), event.get("params", {})
            request = params.get("requestId", "")
            if method == "Network.requestWillBeSent":
                url = params["request"]["url"]
                if _same_origin(url, self.origin):
                    self._urls[request] = url
                    self._pending.add(request)
            elif request not in self._urls:
                continue
            elif method == "Network.responseReceived":
                self.answered += 1
                status = params["response"]["status"]
                if status >= 400:
                    self.failed.append(f"{status} {self._urls[request]}")
            elif method == "Network.loadingFinished":
                self._pending.discard(request)
            elif method == "Network.loadingFailed":
                self._pending.discard(request)
                if not params.get("canceled"):  # the page gave up on it: not a failure
                    why = params.get("blockedReason") or params.get("corsErrorStatus") or ""
                    error = f"{params.get('errorText')} {why}".strip()
                    self.failed.append(f"failed ({error}) {self._urls[request]}")
        return self


def _same_origin(url: str, origin: str) -> bool:
    a, b = urlsplit(url), urlsplit(origin)
    return (a.scheme, a.netloc) == (b.scheme, b.netloc)
