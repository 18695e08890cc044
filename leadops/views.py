"""Pages of the lead core: the home screen and the health endpoints."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.core.cache import cache
from django.db import connection
from django.db.models import Count, Q
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.utils import timezone
from django.views.decorators.http import require_safe

from leadops.health import health_report
from leadops.models import Activity, Lead, Stage, Temperature
from leadops.roles import sees_only_own_leads

RECENT_DAYS = 7
# Counting a million leads and a week of events takes a moment: a team shares one
# count for a minute (a sales rep has their own). Settings may lower it (0: no cache).
HOME_NUMBERS_CACHE_SECONDS = 60


@login_required
def home(request: HttpRequest) -> HttpResponse:
    """The numbers a team looks at first, over the leads this user may see."""
    numbers = _cached_home_numbers(request.user)
    context = {
        "stages": [(s.value, s.label, numbers["stages"].get(s.value, 0)) for s in Stage],
        "temperatures": [
            (t.value, t.label, numbers["temperatures"].get(t.value, 0))
            for t in reversed(Temperature)
        ],
        "total_leads": sum(numbers["stages"].values()),
        "new_leads": numbers["new_leads"],
        "recent_events": numbers["recent_events"],
        "counted_at": numbers["counted_at"],
        "recent_days": RECENT_DAYS,
        "own_leads_only": sees_only_own_leads(request.user),
    }
    return render(request, "leadops/home.html", context)


def _cached_home_numbers(user) -> dict[str, Any]:
    scope = f"owner-{user.pk}" if sees_only_own_leads(user) else "all"
    key = f"leadops:home-numbers:v1:{scope}"
    numbers = cache.get(key)
    if numbers is None:
        numbers = count_home_numbers(user)
        seconds = getattr(settings, "HOME_NUMBERS_CACHE_SECONDS", HOME_NUMBERS_CACHE_SECONDS)
        if seconds:
            cache.set(key, numbers, seconds)
    return numbers


def count_home_numbers(user) -> dict[str, Any]:
    """Leads by stage and temperature, new leads and events of the last days: two queries."""
    now = timezone.now()
    since = now - timedelta(days=RECENT_DAYS)
    leads = Lead.objects.visible_to(user)
    # One GROUP BY over (stage, temperature) gives both breakdowns and the new count.
    rows = (
        leads.order_by()
        .values("stage", "temperature")
        .annotate(total=Count("id"), new=Count("id", filter=Q(created_at__gte=since)))
    )
    stages: dict[str, int] = {}
    temperatures: dict[str, int] = {}
    new_leads = 0
    for row in rows:
        stages[row["stage"]] = stages.get(row["stage"], 0) + row["total"]
        temperatures[row["temperature"]] = temperatures.get(row["temperature"], 0) + row["total"]
        new_leads += row["new"]
    events = Activity.objects.filter(occurred_at__gte=since)
    if sees_only_own_leads(user):
        events = events.filter(lead__owner=user)
    return {
        "stages": stages,
        "temperatures": temperatures,
        "new_leads": new_leads,
        "recent_events": events.count(),
        "counted_at": now,
    }


def healthz(request: HttpRequest) -> JsonResponse:
    """Liveness for load balancers and compose: the database answers."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    return JsonResponse({"status": "ok"})


@require_safe
def health(request: HttpRequest) -> JsonResponse:
    """Database, broker, workers and scheduler, with the backlogs to watch; 503 if any fails."""
    report = health_report()
    return JsonResponse(report, status=200 if report["status"] == "ok" else 503)
