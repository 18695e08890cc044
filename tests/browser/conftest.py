"""Fixtures of the browser tests: headless Chromium on pytest-django's live server.

Each browser is a fresh Chromium profile driven by the system chromedriver (Debian's
`chromium` and `chromium-driver`; CI installs them). `CHROMIUM_BINARY` / `CHROMEDRIVER`
point elsewhere. The live server needs `@pytest.mark.django_db(transaction=True)`: it
answers from another thread, so the test's data must be committed.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from urllib.parse import urlencode, urlsplit

import pytest
from django.contrib.auth.base_user import AbstractBaseUser
from django.urls import reverse
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from leadops.roles import create_user_with_role
from tests.browser import artifact_path, wait, wait_for

CHROME_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--window-size=1400,1200",
    # The site defaults to Japanese; the tests read the English pages (tests/conftest.py
    # sets LANGUAGE_CODE, but LocaleMiddleware follows the browser's Accept-Language).
    "--lang=en-US",
)
# Small: explicit waits (tests.browser.wait_for, swap) do the waiting for htmx swaps.
IMPLICIT_WAIT_SECONDS = 0.5
PAGE_LOAD_SECONDS = 30
PASSWORD = "Browser-pass-123"


def _executable(env_name: str, name: str) -> str:
    path = os.environ.get(env_name) or shutil.which(name)
    if not path:
        pytest.fail(
            f"{name} is not installed: `apt-get install chromium chromium-driver` "
            f"(CI does), or set {env_name}."
        )
    return path


def chrome_options(profile_dir: str) -> webdriver.ChromeOptions:
    options = webdriver.ChromeOptions()
    options.binary_location = _executable("CHROMIUM_BINARY", "chromium")
    for flag in CHROME_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile_dir}")
    options.add_experimental_option("prefs", {"intl.accept_languages": "en-US,en"})
    return options


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    # Lets the browser fixture know whether the test failed, to keep what it last showed.
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"report_{report.when}", report)


def _keep_failure(driver: WebDriver, name: str) -> None:
    png, html = artifact_path(f"{name}.png"), artifact_path(f"{name}.html")
    try:
        driver.save_screenshot(str(png))
        html.write_text(driver.page_source, encoding="utf-8")
    except Exception as exc:  # a dead browser must not hide the test's own failure
        print(f"could not keep the failed page {name}: {exc}")
    else:
        print(f"failed page kept: {png} and {html}")


@pytest.fixture
def new_browser(request: pytest.FixtureRequest) -> Iterator[Callable[[], WebDriver]]:
    """Start headless Chromium sessions (each a fresh profile); all quit at teardown."""
    drivers: list[tuple[WebDriver, str]] = []

    def start() -> WebDriver:
        profile = tempfile.mkdtemp(prefix="leadops-chromium-")
        service = Service(executable_path=_executable("CHROMEDRIVER", "chromedriver"))
        try:
            driver = webdriver.Chrome(options=chrome_options(profile), service=service)
        except Exception:
            shutil.rmtree(profile, ignore_errors=True)
            raise
        drivers.append((driver, profile))
        driver.implicitly_wait(IMPLICIT_WAIT_SECONDS)
        driver.set_page_load_timeout(PAGE_LOAD_SECONDS)
        return driver

    yield start
    report = getattr(request.node, "report_call", None)
    failed = report is not None and report.failed
    test_name = re.sub(r"\W+", "-", request.node.name)
    for number, (driver, profile) in enumerate(drivers, start=1):
        if failed:
            _keep_failure(driver, f"failed-{test_name}-{number}")
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture
def browser(new_browser: Callable[[], WebDriver]) -> WebDriver:
    """One headless Chromium session."""
    return new_browser()


@pytest.fixture
def role_user(transactional_db) -> Callable[[str, str], AbstractBaseUser]:
    """A real user in a role who can log in through the login page (staff, like every
    user `manage.py adduser` makes), with the password `PASSWORD`."""

    def make(username: str, role: str) -> AbstractBaseUser:
        return create_user_with_role(username, role=role, password=PASSWORD)

    return make


@pytest.fixture
def log_in(live_server) -> Callable[..., None]:
    """Log `user` in through the real login page and land on `next_path`."""

    def log_in(driver: WebDriver, user, *, next_path: str) -> None:
        login = reverse("admin:login")
        driver.get(f"{live_server.url}{login}?{urlencode({'next': next_path})}")
        form = wait_for(driver, "#login-form")
        form.find_element(By.NAME, "username").send_keys(user.get_username())
        form.find_element(By.NAME, "password").send_keys(PASSWORD)
        # The language switcher's button comes first in the page: name the form's own.
        form.find_element(By.CSS_SELECTOR, "#login-form [type=submit]").click()
        # A new page has loaded: the login page again (refused) or `next_path`. (Polling
        # the old form for staleness races with the navigation in Chromium.)
        wait(driver).until(
            lambda d: (
                urlsplit(d.current_url).path != login
                or d.find_elements(By.CSS_SELECTOR, ".errornote")
            ),
            "the login form was not submitted",
        )
        wait(driver).until(
            lambda d: d.execute_script("return document.readyState") == "complete",
            "the page after log in did not load",
        )
        refused = driver.find_elements(By.CSS_SELECTOR, "#login-form, .errornote")
        assert not refused, f"{user.get_username()} could not log in: {refused[0].text}"
        assert urlsplit(driver.current_url).path == next_path
        wait_for(driver, "main#main", visible=False)

    return log_in


@pytest.fixture
def log_out() -> Callable[[WebDriver], None]:
    """Log out with the header's button (a POST to the admin's logout)."""

    def log_out(driver: WebDriver) -> None:
        button = driver.find_element(By.CSS_SELECTOR, ".logout-form [type=submit]")
        button.click()
        # The session cookie going is the proof; watching the old button go stale races
        # with the navigation (Chromium: "Node … does not belong to the document").
        wait(driver).until(lambda d: d.get_cookie("sessionid") is None, "still logged in")
        wait(driver).until(
            lambda d: d.execute_script("return document.readyState") == "complete",
            "the page after log out did not load",
        )

    return log_out
