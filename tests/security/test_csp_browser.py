"""The Content-Security-Policy in a real browser: headless Chromium loads the pages and
reports every CSP violation (a `securitypolicyviolation` listener installed before any
page script runs). None may happen, and the scripts that must run do: Swagger UI
renders the API, htmx loads, the segment editor adds a row."""

from __future__ import annotations

import shutil
import tempfile

import pytest
from django.contrib.auth import get_user_model
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

from tests.browser import wait, wait_for
from tests.browser.conftest import IMPLICIT_WAIT_SECONDS, _executable, chrome_options

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

LISTEN = (
    "window.__cspViolations = [];"
    "document.addEventListener('securitypolicyviolation', function (e) {"
    "  window.__cspViolations.push(e.violatedDirective + ' ' + e.blockedURI);"
    "});"
)


@pytest.fixture
def browser():
    profile = tempfile.mkdtemp(prefix="leadops-csp-")
    service = Service(executable_path=_executable("CHROMEDRIVER", "chromedriver"))
    driver = webdriver.Chrome(options=chrome_options(profile), service=service)
    driver.implicitly_wait(IMPLICIT_WAIT_SECONDS)
    driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": LISTEN})
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


def violations(driver) -> list[str]:
    return driver.execute_script("return window.__cspViolations || []")


def test_pages_run_under_the_policy_without_violations(browser, live_server):
    get_user_model().objects.create_superuser("csp-root", "root@example.jp", "Csp-pass-123")
    browser.get(f"{live_server.url}/admin/login/?next=/admin/")
    form = wait_for(browser, "#login-form")
    form.find_element(By.NAME, "username").send_keys("csp-root")
    form.find_element(By.NAME, "password").send_keys("Csp-pass-123")
    form.find_element(By.CSS_SELECTOR, "[type=submit]").click()
    wait_for(browser, "#user-tools", visible=False)
    assert violations(browser) == []

    for path in ("/", "/queue/", "/dashboard/", "/notifications/"):
        browser.get(f"{live_server.url}{path}")
        wait(browser).until(lambda d: d.execute_script("return !!window.htmx"), "no htmx")
        assert violations(browser) == [], path

    browser.get(f"{live_server.url}/admin/nurturing/segment/add/")
    rows = len(browser.find_elements(By.CSS_SELECTOR, "#segment-conditions tbody"))
    browser.find_element(By.ID, "segment-add-condition").click()
    wait(browser).until(
        lambda d: len(d.find_elements(By.CSS_SELECTOR, "#segment-conditions tbody")) == rows + 1,
        "the segment editor's script did not run",
    )
    assert violations(browser) == [], "segment editor"

    browser.get(f"{live_server.url}/api/docs/")
    wait_for(browser, ".swagger-ui .opblock")
    assert violations(browser) == [], "/api/docs/"

    # The listener does see a violation: an inline script injected now is refused.
    browser.execute_script(
        "var s = document.createElement('script'); s.textContent = 'window.ran = 1';"
        "document.body.appendChild(s);"
    )
    wait(browser).until(lambda d: violations(d), "the listener saw nothing")
    assert browser.execute_script("return window.ran === undefined")
