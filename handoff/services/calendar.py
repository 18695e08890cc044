"""Business time: SLA deadlines counted in working hours of the team's calendar.

The calendar is the hand-off settings (working days, hours, time zone; default
Mon–Fri 9:00–18:00 Asia/Tokyo) minus Japanese public holidays (the `holidays`
package, kept up to date with the cabinet office's list) and company holidays.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo

import holidays

from handoff.models import CompanyHoliday, HandoffPolicy

# A deadline further than this many calendar days away means a calendar with no
# working time at all (every weekday unchecked): stop rather than loop forever.
MAX_CALENDAR_DAYS = 3660


@lru_cache(maxsize=64)
def _japanese_holidays(year: int) -> frozenset[date]:
    return frozenset(holidays.country_holidays("JP", years=year))


@dataclass(frozen=True)
class BusinessCalendar:
    time_zone: ZoneInfo
    workdays: frozenset[int]
    day_start: time
    day_end: time
    japanese_holidays: bool = True
    company_holidays: frozenset[date] = field(default_factory=frozenset)

    def is_working_day(self, day: date) -> bool:
        if day.weekday() not in self.workdays or day in self.company_holidays:
            return False
        return not (self.japanese_holidays and day in _japanese_holidays(day.year))

    def add_business_time(self, start: datetime, duration: timedelta) -> datetime:
        """The moment `duration` of working time after `start` (aware datetimes)."""
        local = start.astimezone(self.time_zone)
        remaining = duration
        day = local.date()
        for _ in range(MAX_CALENDAR_DAYS):
            opens, closes = self._window(day)
            if opens is not None:
                begin = max(opens, local)
                if begin < closes:
                    if begin + remaining <= closes:
                        return begin + remaining
                    remaining -= closes - begin
            day += timedelta(days=1)
        raise ValueError("The business calendar has no working time; check the hand-off settings.")

    def business_time_between(self, start: datetime, end: datetime) -> timedelta:
        """Working time from `start` to `end` (zero if end is not after start)."""
        total = timedelta()
        if end <= start:
            return total
        local_start, local_end = start.astimezone(self.time_zone), end.astimezone(self.time_zone)
        day = local_start.date()
        while day <= local_end.date():
            opens, closes = self._window(day)
            if opens is not None:
                begin, finish = max(opens, local_start), min(closes, local_end)
                total += max(finish - begin, timedelta())
            day += timedelta(days=1)
        return total

    def _window(self, day: date) -> tuple[datetime | None, datetime | None]:
        if not self.is_working_day(day):
            return None, None
        opens = datetime.combine(day, self.day_start, tzinfo=self.time_zone)
        closes = datetime.combine(day, self.day_end, tzinfo=self.time_zone)
        return opens, closes


def get_policy() -> HandoffPolicy:
    """The team's hand-off settings (created with the defaults on first use)."""
    policy, _created = HandoffPolicy.objects.get_or_create(pk=1)
    return policy


def calendar_for(policy: HandoffPolicy) -> BusinessCalendar:
    return BusinessCalendar(
        time_zone=ZoneInfo(policy.time_zone),
        workdays=frozenset(int(day) for day in policy.workdays),
        day_start=policy.day_start,
        day_end=policy.day_end,
        japanese_holidays=policy.observe_japanese_holidays,
        company_holidays=frozenset(CompanyHoliday.objects.values_list("date", flat=True)),
    )


@dataclass(frozen=True)
class SlaClock:
    """When a hand-off opened at `opened_at` warns and is due."""

    warn_at: datetime
    due_at: datetime


def sla_clock(
    opened_at: datetime, *, hours: int, policy: HandoffPolicy, calendar: BusinessCalendar
) -> SlaClock:
    budget = timedelta(hours=hours)
    return SlaClock(
        warn_at=calendar.add_business_time(opened_at, budget * policy.warning_percent / 100),
        due_at=calendar.add_business_time(opened_at, budget),
    )
