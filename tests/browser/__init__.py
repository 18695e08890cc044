"""Browser tests: the hand-off pages driven in a real headless Chromium (selenium).

The helpers below wait explicitly for what a page or an htmx swap must show; no test
sleeps. `tests/browser/conftest.py` holds the fixtures (the browser, logging in).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from django.conf import settings
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

# Long enough for a cold page on a busy 2-core CI machine; a passing step takes far less.
WAIT_SECONDS = 15


def wait(driver: WebDriver, seconds: float = WAIT_SECONDS) -> WebDriverWait:
    return WebDriverWait(driver, seconds)


def wait_for(driver: WebDriver, css: str, *, visible: bool = True) -> WebElement:
    """The element matching `css` once it is in the page (and shown, by default)."""
    condition = EC.visibility_of_element_located if visible else EC.presence_of_element_located
    return wait(driver).until(condition((By.CSS_SELECTOR, css)), f"nothing matches {css!r}")


def swap(driver: WebDriver, css: str, act: Callable[[], Any]) -> WebElement:
    """Run `act` (a click, a key) and return the element htmx swapped in for `css`.

    An outerHTML swap replaces the element, so the old one going stale is the signal
    that the server's answer is in the page.
    """
    old = driver.find_element(By.CSS_SELECTOR, css)
    act()
    wait(driver).until(EC.staleness_of(old), f"{css!r} was not swapped")
    return wait_for(driver, css)


def mark_page(driver: WebDriver, mark: str) -> None:
    """Tag the current document; `same_page` tells whether a full reload dropped it."""
    driver.execute_script("window.__leadopsPage = arguments[0];", mark)


def same_page(driver: WebDriver, mark: str) -> bool:
    return driver.execute_script("return window.__leadopsPage || null;") == mark


def classes(element: WebElement) -> set[str]:
    return set((element.get_attribute("class") or "").split())


def artifact_path(name: str) -> Path:
    """A file under var/test-artifacts/ (CI keeps that folder), created on demand."""
    folder = Path(settings.BASE_DIR) / "var" / "test-artifacts"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / name
