"""Business time: SLA deadlines across nights, weekends, Japanese and company holidays."""

from __future__ import annotations

from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest

from handoff.models import CompanyHoliday, HandoffPolicy
from handoff.services.calendar import BusinessCalendar, calendar_for, get_policy, sla_clock

TOKYO = ZoneInfo("Asia/Tokyo")


def tokyo(*args: int) -> datetime:
    return datetime(*args, tzinfo=TOKYO)


def default_calendar(**changes) -> BusinessCalendar:
    fields = {
        "time_zone": TOKYO,
        "workdays": frozenset({0, 1, 2, 3, 4}),
        "day_start": time(9),
        "day_end": time(18),
        "japanese_holidays": True,
    }
    return BusinessCalendar(**(fields | changes))


def test_within_one_working_day():
    # Wednesday 2026-11-18 10:00 + 3h = 13:00 the same day.
    assert default_calendar().add_business_time(tokyo(2026, 11, 18, 10), timedelta(hours=3)) == (
        tokyo(2026, 11, 18, 13)
    )


def test_overnight_carries_the_rest_to_the_next_morning():
    # Wed 16:00 + 4h: 2h today (to 18:00), 2h on Thursday from 9:00.
    assert default_calendar().add_business_time(tokyo(2026, 11, 18, 16), timedelta(hours=4)) == (
        tokyo(2026, 11, 19, 11)
    )


def test_an_mql_on_friday_evening_is_due_after_the_weekend():
    # Friday 2026-11-13 20:00 (after hours): 24 business hours = Mon, Tue 9h each + 6h Wed.
    due = default_calendar().add_business_time(tokyo(2026, 11, 13, 20), timedelta(hours=24))
    assert due == tokyo(2026, 11, 18, 15)


def test_japanese_public_holiday_is_skipped():
    # Monday 2026-11-23 is 勤労感謝の日. Friday 11-20 17:00 + 2h: 1h Friday, then Tuesday.
    calendar = default_calendar()
    assert not calendar.is_working_day(date(2026, 11, 23))
    due = calendar.add_business_time(tokyo(2026, 11, 20, 17), timedelta(hours=2))
    assert due == tokyo(2026, 11, 24, 10)


def test_golden_week_and_the_weekend_together():
    # 2026-05-01 is a Friday; 5/2-5/3 weekend, 5/3-5/6 holidays (憲法記念日, みどりの日,
    # こどもの日, 振替休日): the next working day is Thursday 5/7.
    due = default_calendar().add_business_time(tokyo(2026, 5, 1, 17), timedelta(hours=2))
    assert due == tokyo(2026, 5, 7, 10)


def test_holidays_can_be_ignored_and_company_holidays_added():
    holiday_off = default_calendar(japanese_holidays=False)
    assert holiday_off.is_working_day(date(2026, 11, 23))
    company = default_calendar(company_holidays=frozenset({date(2026, 11, 19)}))
    due = company.add_business_time(tokyo(2026, 11, 18, 17), timedelta(hours=2))
    assert due == tokyo(2026, 11, 20, 10)


def test_starting_before_opening_counts_from_opening_time():
    due = default_calendar().add_business_time(tokyo(2026, 11, 18, 6), timedelta(hours=1))
    assert due == tokyo(2026, 11, 18, 10)


def test_utc_input_is_read_in_the_team_time_zone():
    # 00:30 UTC is 09:30 in Tokyo.
    start = datetime(2026, 11, 18, 0, 30, tzinfo=ZoneInfo("UTC"))
    assert default_calendar().add_business_time(start, timedelta(hours=1)) == tokyo(
        2026, 11, 18, 10, 30
    )


def test_business_time_between_skips_nights_weekends_and_holidays():
    calendar = default_calendar()
    # Fri 11-20 17:00 → Tue 11-24 10:00: 1h Friday + (Mon holiday) + 1h Tuesday.
    assert calendar.business_time_between(tokyo(2026, 11, 20, 17), tokyo(2026, 11, 24, 10)) == (
        timedelta(hours=2)
    )
    assert calendar.business_time_between(tokyo(2026, 11, 24), tokyo(2026, 11, 20)) == timedelta()


def test_a_calendar_without_working_days_refuses_instead_of_looping():
    with pytest.raises(ValueError):
        default_calendar(workdays=frozenset()).add_business_time(
            tokyo(2026, 11, 18, 10), timedelta(hours=1)
        )


@pytest.mark.django_db
def test_policy_defaults_match_the_product_reference():
    policy = get_policy()
    assert policy.pk == 1
    assert (policy.time_zone, policy.workdays) == ("Asia/Tokyo", [0, 1, 2, 3, 4])
    assert (policy.day_start, policy.day_end) == (time(9), time(18))
    assert (policy.first_contact_sla_hours, policy.acceptance_sla_hours) == (24, 18)
    assert get_policy().pk == 1 and HandoffPolicy.objects.count() == 1


@pytest.mark.django_db
def test_sla_clock_uses_the_admin_settings_and_company_holidays():
    policy = get_policy()
    policy.first_contact_sla_hours = 4
    policy.warning_percent = 75
    policy.save()
    CompanyHoliday.objects.create(date=date(2026, 11, 19), name="創立記念日")
    clock = sla_clock(
        tokyo(2026, 11, 18, 16), hours=4, policy=policy, calendar=calendar_for(policy)
    )
    # 3h warning point: 2h Wed + 1h Fri (Thu is the company holiday); 4h due: Fri 11:00.
    assert clock.warn_at == tokyo(2026, 11, 20, 10)
    assert clock.due_at == tokyo(2026, 11, 20, 11)
