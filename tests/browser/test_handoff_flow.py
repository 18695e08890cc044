"""The hand-off in a real browser: an IS rep works an MQL from /queue/ to SQL, the sales
rep rejects it from /inbox/, the lead is back in nurturing (issue 4, Tests).

Real clicks and keys in headless Chromium against the live server, real PostgreSQL;
the queue page is kept as a screenshot in var/test-artifacts/queue.png.
"""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest
from django.utils import timezone, translation
from selenium.common.exceptions import NoAlertPresentException
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import Select

from handoff.forms import RejectForm
from handoff.models import ContactAttempt, Handoff, Notification, StageTransition
from handoff.services import mark_lead_mql, qualify_lead, sla_state_at
from leadops.models import Lead
from leadops.roles import Role
from scoring.services import rescore_leads
from tests.browser import (
    artifact_path,
    classes,
    mark_page,
    same_page,
    swap,
    wait,
    wait_for,
)
from tests.factories import ActivityFactory, LeadFactory

pytestmark = pytest.mark.django_db(transaction=True)

XSS = "<script>alert(1)</script>"
BANT = {"budget": "300万円", "authority": "部長決裁", "need": "MA刷新", "timeline": "来期"}


def press(driver: WebDriver, key: str) -> None:
    """A key typed at whatever has the focus, as a user would."""
    ActionChains(driver).send_keys(key).perform()


def assert_no_alert(driver: WebDriver) -> None:
    with pytest.raises(NoAlertPresentException):
        driver.switch_to.alert  # noqa: B018 (the property raises when no alert is open)


def assert_english(driver: WebDriver) -> None:
    lang = driver.find_element(By.TAG_NAME, "html").get_attribute("lang")
    assert lang == "en", f"the page came in {lang!r}: check the browser's Accept-Language"


def mql_by_scoring() -> Lead:
    """A nurtured lead whose pricing-page view makes it an MQL: an open IS hand-off."""
    lead = LeadFactory(stage="nurturing", last_name="佐藤", first_name="花子")
    ActivityFactory(lead=lead, type="page_view", properties={"url": "https://example.jp/pricing"})
    rescore_leads([lead.pk])
    lead.refresh_from_db()
    assert lead.stage == "mql"
    return lead


def test_is_rep_qualifies_and_sales_rep_rejects_back_to_nurturing(
    browser, live_server, role_user, log_in, log_out, capsys
):
    is_rep = role_user("is-browser", Role.INSIDE_SALES)
    sales_rep = role_user("sales-browser", Role.SALES)
    lead = mql_by_scoring()
    handoff = Handoff.objects.get(lead=lead, kind="inside_sales")
    assert (handoff.status, handoff.assignee_id) == ("open", is_rep.pk)  # round-robin
    row_css = f"#handoff-{handoff.pk}"
    panel_css = f"{row_css}-panel"

    # --- the IS rep's queue: the row with its live SLA state -------------------------
    state_before = sla_state_at(handoff, timezone.now())
    log_in(browser, is_rep, next_path="/queue/")
    assert_english(browser)
    row = wait_for(browser, row_css)
    state_after = sla_state_at(handoff, timezone.now())
    assert row.find_element(By.CSS_SELECTOR, ".lead-link").text == "佐藤 花子"
    sla = row.find_element(By.CSS_SELECTOR, ".sla-cell .sla")
    assert classes(sla) & {f"sla-{state_before}", f"sla-{state_after}"}
    assert row.find_element(By.CSS_SELECTOR, ".sla-cell .countdown").text
    assert row.find_element(By.CSS_SELECTOR, ".reasons").text  # why it scored
    mark_page(browser, "queue")

    # j selects the row, c claims it: the row is swapped in place.
    press(browser, "j")
    wait(browser).until(
        lambda d: "is-selected" in classes(d.find_element(By.CSS_SELECTOR, row_css))
    )
    row = swap(browser, row_css, lambda: press(browser, "c"))
    assert row.find_elements(By.CSS_SELECTOR, ".status-claimed")
    assert row.find_elements(By.CSS_SELECTOR, ".inline-message.success")
    assert not row.find_elements(By.CSS_SELECTOR, "[data-action=claim]")
    handoff.refresh_from_db()
    assert (handoff.status, handoff.assignee_id) == ("claimed", is_rep.pk)

    # A contact attempt, by mouse: the form opens in the row's panel.
    row.find_element(By.CSS_SELECTOR, "[data-action=contact]").click()
    form = wait_for(browser, f"{panel_css} form[data-action-form=contact]")
    Select(form.find_element(By.NAME, "channel")).select_by_value("call")
    Select(form.find_element(By.NAME, "outcome")).select_by_value("reached")
    form.find_element(By.NAME, "note").send_keys("予算は来期に確保済み")
    submit = form.find_element(By.CSS_SELECTOR, "[type=submit]")
    row = swap(browser, row_css, submit.click)
    assert row.find_elements(By.CSS_SELECTOR, ".inline-message.success")
    assert not browser.find_elements(By.CSS_SELECTOR, f"{panel_css} form")
    attempt = ContactAttempt.objects.get(handoff=handoff)
    assert (attempt.channel, attempt.outcome, attempt.actor_id) == ("call", "reached", is_rep.pk)

    # q opens the qualify form (the row is still selected); choose the sales rep.
    press(browser, "q")
    form = wait_for(browser, f"{panel_css} form[data-action-form=qualify]")
    Select(form.find_element(By.NAME, "sales_rep")).select_by_value(str(sales_rep.pk))
    for name, value in BANT.items():
        form.find_element(By.NAME, name).send_keys(value)
    # The artefact shows the page from its top (no smooth scrolling to wait for).
    browser.execute_script("window.scrollTo({top: 0, behavior: 'instant'});")
    screenshot = artifact_path("queue.png")
    assert browser.save_screenshot(str(screenshot))
    with capsys.disabled():  # shown in every run, not only when the test fails
        print(f"\nqueue page screenshot: {screenshot}")
    submit = form.find_element(By.CSS_SELECTOR, "[type=submit]")
    row = swap(browser, row_css, submit.click)
    assert "is-done" in classes(row)
    assert row.find_elements(By.CSS_SELECTOR, ".sla-cell .outcome")
    assert same_page(browser, "queue"), "the queue reloaded instead of swapping rows"
    assert_no_alert(browser)
    lead.refresh_from_db()
    assert (lead.stage, lead.owner_id) == ("sql", sales_rep.pk)

    # Reloaded (the address bar never left the queue), it no longer lists the lead.
    assert urlsplit(browser.current_url).path == "/queue/"
    browser.refresh()
    wait_for(browser, "table.queue")
    assert not browser.find_elements(By.CSS_SELECTOR, row_css)

    # --- the sales rep's inbox: reject with a reason and a comment -------------------
    log_out(browser)
    log_in(browser, sales_rep, next_path="/inbox/")
    card_css = f"#inbox-{lead.pk}"
    card = wait_for(browser, card_css)
    assert card.find_element(By.CSS_SELECTOR, ".lead-link").text == "佐藤 花子"
    assert card.find_elements(By.CSS_SELECTOR, ".sla")  # the acceptance SLA
    mark_page(browser, "inbox")
    card.find_element(By.CSS_SELECTOR, "details.reject summary").click()
    form = wait_for(browser, f"{card_css} form[data-action-form=reject]")
    Select(form.find_element(By.NAME, "reason")).select_by_value("timing")
    form.find_element(By.NAME, "comment").send_keys(XSS)
    submit = form.find_element(By.CSS_SELECTOR, "[type=submit]")
    card = swap(browser, card_css, submit.click)
    assert "is-done" in classes(card)
    assert card.find_elements(By.CSS_SELECTOR, ".inline-message.success")
    assert same_page(browser, "inbox")
    assert_no_alert(browser)

    # --- the lead's page (the IS rep's: the sales rep no longer owns it) -------------
    log_out(browser)
    log_in(browser, is_rep, next_path=f"/leads/{lead.pk}/")
    assert_no_alert(browser)
    stage = wait_for(browser, "#lead-summary .stage")
    assert "stage-nurturing" in classes(stage)
    lines = [
        line.text
        for line in browser.find_elements(By.CSS_SELECTOR, "#lead-timeline .entry-line")
        if XSS in line.text
    ]
    assert lines, "the rejection comment is not on the timeline as text"
    assert not browser.find_elements(By.CSS_SELECTOR, "#lead-timeline script")
    assert_no_alert(browser)

    # The bell tells the IS rep; the notification quotes the comment, as text.
    wait_for(browser, "#notification-bell.has-unread").click()
    bodies = [
        body.text
        for body in wait(browser).until(
            lambda d: d.find_elements(By.CSS_SELECTOR, ".notification-body")
        )
    ]
    assert any(XSS in body for body in bodies)
    assert_no_alert(browser)

    # --- what the database says ------------------------------------------------------
    lead.refresh_from_db()
    assert (lead.stage, lead.behavior_score, lead.owner_id) == ("nurturing", 0, None)
    path = list(
        StageTransition.objects.filter(lead=lead)
        .order_by("created_at", "id")
        .values_list("from_stage", "to_stage")
    )
    assert path == [("nurturing", "mql"), ("mql", "sql"), ("sql", "nurturing")]
    sales = Handoff.objects.get(lead=lead, kind="sales")
    assert (sales.status, sales.outcome, sales.reason, sales.comment) == (
        "done",
        "rejected",
        "timing",
        XSS,
    )
    told = Notification.objects.filter(recipient=is_rep, kind="sql_rejected", lead=lead)
    assert told.count() == 1


def test_inbox_reject_without_comment_shows_the_field_error(browser, role_user, log_in):
    is_rep = role_user("is-browser", Role.INSIDE_SALES)
    sales_rep = role_user("sales-browser", Role.SALES)
    lead = LeadFactory(stage="nurturing")
    mark_lead_mql(lead.pk, reason="test")
    handoff = Handoff.objects.get(lead=lead, kind="inside_sales")
    qualify_lead(handoff.pk, actor=is_rep, sales_rep=sales_rep, bant=BANT)
    waiting = Handoff.objects.get(lead=lead, kind="sales")
    card_css = f"#inbox-{lead.pk}"

    log_in(browser, sales_rep, next_path="/inbox/")
    assert_english(browser)
    card = wait_for(browser, card_css)
    mark_page(browser, "inbox")
    card.find_element(By.CSS_SELECTOR, "details.reject summary").click()
    form = wait_for(browser, f"{card_css} form[data-action-form=reject]")
    Select(form.find_element(By.NAME, "reason")).select_by_value("no_budget")
    comment = form.find_element(By.NAME, "comment")

    # Empty: the browser itself refuses to send the form (the field is required).
    form.find_element(By.CSS_SELECTOR, "[type=submit]").click()
    assert browser.execute_script("return arguments[0].validity.valueMissing;", comment)
    assert browser.find_element(By.CSS_SELECTOR, card_css) == card  # not swapped

    # Blanks pass the browser's check; the server answers with the field's error.
    comment.send_keys("   ")
    submit = form.find_element(By.CSS_SELECTOR, "[type=submit]")
    card = swap(browser, card_css, submit.click)
    assert same_page(browser, "inbox")
    assert card.find_element(By.CSS_SELECTOR, "details.reject").get_attribute("open") is not None
    field = card.find_element(By.CSS_SELECTOR, ".field.has-error")
    with translation.override("en"):
        expected = str(RejectForm.base_fields["comment"].error_messages["required"])
    assert field.find_element(By.CSS_SELECTOR, ".errorlist").text == expected
    comment = field.find_element(By.NAME, "comment")
    assert comment.get_attribute("aria-invalid") == "true"
    reason = Select(card.find_element(By.NAME, "reason")).first_selected_option
    assert reason.get_attribute("value") == "no_budget"  # what was chosen stays chosen
    assert not card.find_elements(By.CSS_SELECTOR, ".inline-message.success")

    # Nothing changed.
    lead.refresh_from_db()
    assert (lead.stage, lead.owner_id) == ("sql", sales_rep.pk)
    sales = Handoff.objects.get(pk=waiting.pk)
    assert (sales.status, sales.outcome, sales.closed_at) == (waiting.status, "", None)
    assert not StageTransition.objects.filter(lead=lead, to_stage="nurturing").exists()
