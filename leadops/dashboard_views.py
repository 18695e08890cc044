"""The funnel dashboard page: filters from the URL, numbers from `leadops.dashboard`.

Who sees it: marketers (the feedback loop is theirs), inside sales (their SLA) and
managers. A sales-only user gets 403 rather than a funnel of their own leads: the page
is the team's view (per-rep SLA, every source's rejections, comments on other reps'
leads), a funnel of one rep's handful of SQLs says little, and their leads are in their
inbox.

Charts are inline SVG drawn on the server (no script, no CDN); every bar carries its
value as text, and the same numbers are in the tables beside it.
"""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

from django import forms
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils import formats, timezone
from django.utils.http import urlencode
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy
from django.views.decorators.http import require_GET

from handoff.models import HandoffKind, RejectReason
from handoff.views import header_context
from leadops import dashboard as queries
from leadops.models import COMMON_SOURCES
from leadops.roles import Role, has_role

EARLIEST = date(2000, 1, 1)
MAX_DAYS = 1096  # three years: a longer period is a report, not a dashboard
FUTURE_DAYS = 366
SOURCE_MAX_LENGTH = 100
SOURCES_SHOWN = 30
RULE_KIND_LABELS = {
    "attribute": gettext_lazy("Attribute"),
    "behavior": gettext_lazy("Behaviour"),
    "trigger": gettext_lazy("Hand-off trigger"),
}


def may_read_dashboard(user) -> bool:
    return has_role(user, Role.MARKETER, Role.INSIDE_SALES, Role.MANAGER)


class DashboardFilterForm(forms.Form):
    """?days=30|90|365, or ?from=YYYY-MM-DD&to=YYYY-MM-DD (dates win), and ?source=."""

    days = forms.TypedChoiceField(
        label=gettext_lazy("Period"),
        choices=[(d, d) for d in queries.PRESET_DAYS],
        coerce=int,
        required=False,
        empty_value=None,
    )
    source = forms.CharField(
        label=gettext_lazy("Source"),
        max_length=SOURCE_MAX_LENGTH,
        required=False,
        widget=forms.TextInput(
            attrs={"list": "dashboard-sources", "placeholder": gettext_lazy("All sources")}
        ),
    )

    def __init__(self, *args: Any, today: date, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.today = today
        # "from" is a Python keyword and the URL's name: added here, not declared above.
        dates = (("from", gettext_lazy("Start date")), ("to", gettext_lazy("End date")))
        for name, label in dates:
            self.fields[name] = forms.DateField(
                label=label,
                required=False,
                input_formats=["%Y-%m-%d"],
                widget=forms.DateInput(attrs={"type": "date"}, format="%Y-%m-%d"),
            )
        self.order_fields(["from", "to", "source", "days"])

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        start, end = data.get("from"), data.get("to")
        latest = self.today + timedelta(days=FUTURE_DAYS)
        for name, day in (("from", start), ("to", end)):
            if day is not None and day < EARLIEST:
                self.add_error(name, _("Choose a date from %(date)s on.") % {"date": EARLIEST})
            elif day is not None and day > latest:
                self.add_error(name, _("Choose a date no later than %(date)s.") % {"date": latest})
        if start and end and start > end:
            self.add_error("to", _("The end date must be on or after the start date."))
        elif start and end and (end - start).days >= MAX_DAYS:
            self.add_error(
                "to", _("Choose a period of at most %(days)d days.") % {"days": MAX_DAYS}
            )
        return data

    def filters(self) -> queries.Filters:
        """The valid form's view: explicit dates, else the preset (30 days by default)."""
        data = self.cleaned_data
        source = data.get("source") or ""
        start, end = data.get("from"), data.get("to")
        if start is None and end is None:
            days = data.get("days") or queries.DEFAULT_DAYS
            return queries.preset_filters(days, today=self.today, source=source)
        if end is None:
            end = min(max(self.today, start), start + timedelta(days=MAX_DAYS - 1))
        start = start or end - timedelta(days=queries.DEFAULT_DAYS - 1)
        return queries.Filters(start=start, end=end, source=source)

    def preset(self) -> int | None:
        """The preset in use (None when explicit dates are)."""
        data = self.cleaned_data
        if data.get("from") or data.get("to"):
            return None
        return data.get("days") or queries.DEFAULT_DAYS


@login_required
@require_GET
def dashboard(request: HttpRequest) -> HttpResponse:
    """The funnel, SLA compliance, why sales rejected what they rejected, track KPIs."""
    if not may_read_dashboard(request.user):
        raise PermissionDenied(_("The dashboard is for marketers, inside sales and managers."))
    form = DashboardFilterForm(request.GET, today=timezone.localdate())
    if not form.is_valid():
        context = {"form": form, "presets": preset_links(None, source="")}
        return _render(request, context, status=400)
    filters = form.filters()
    queries.note_dashboard_viewed()
    numbers = queries.cached_dashboard_numbers(filters)
    context = dashboard_context(numbers, filters, preset=form.preset())
    context["tracks"] = track_rows(queries.cached_track_kpis())
    context["form"] = DashboardFilterForm(
        initial={"from": filters.start, "to": filters.end, "source": filters.source},
        today=form.today,
    )
    return _render(request, context)


def _render(request: HttpRequest, context: dict[str, Any], status: int = 200) -> HttpResponse:
    context = {**header_context(request), **context}
    return render(request, "leadops/dashboard.html", context, status=status)


# --- what the template shows ------------------------------------------------------------


def dashboard_context(
    numbers: dict[str, Any], filters: queries.Filters, *, preset: int | None
) -> dict[str, Any]:
    """The cached numbers with labels, rates and chart geometry, in the user's language."""
    steps = funnel_rows(numbers["funnel"]["total"])
    reasons = reason_rows(numbers["reasons"])
    by_source, source_average = answer_rows(numbers["by_source"])
    by_rule, rule_average = answer_rows(numbers["by_rule"])
    return {
        "filters": filters,
        "filter_query": filter_query(filters),
        "presets": preset_links(preset, source=filters.source),
        "computed_at": numbers["computed_at"],
        "funnel": steps,
        "funnel_chart": bar_chart([(s["label"], s["count"], s["count_text"]) for s in steps]),
        "source_funnels": source_funnel_rows(numbers["funnel"]["by_source"], filters),
        "sla": sla_sections(numbers["sla"]),
        "reasons": reasons,
        "reasons_chart": bar_chart([(r["label"], r["count"], r["count_text"]) for r in reasons]),
        "rejected_total": sum(r["count"] for r in reasons),
        "reason_labels": [label for _code, label in RejectReason.choices],
        "answers_by_source": by_source,
        "source_average": source_average,
        "answers_by_rule": by_rule,
        "rule_average": rule_average,
        "rule_sample": {k: number(v) for k, v in numbers["rule_sample"].items()},
        "rule_sample_partial": numbers["rule_sample"]["counted"]
        < numbers["rule_sample"]["answers"],
        "latest_rejections": rejection_rows(numbers["latest_rejections"]),
        "source_choices": sorted({*COMMON_SOURCES, *numbers["funnel"]["by_source"]} - {""}),
    }


def filter_query(filters: queries.Filters, **changes: Any) -> str:
    """The query string of a view with explicit dates (what "share" links carry)."""
    params = {"from": filters.start.isoformat(), "to": filters.end.isoformat()}
    if filters.source:
        params["source"] = filters.source
    return urlencode({**params, **changes})


def preset_links(current: int | None, *, source: str) -> list[dict[str, Any]]:
    links = []
    for days in queries.PRESET_DAYS:
        params = {"days": days} | ({"source": source} if source else {})
        label = _("Last %(days)d days") % {"days": days}
        links.append({"days": days, "label": label, "query": urlencode(params)})
    return [link | {"current": link["days"] == current} for link in links]


def funnel_rows(counts: dict[str, list]) -> list[dict[str, Any]]:
    labels = {queries.LEAD_STEP: _("Leads")} | {
        str(stage): str(stage.label) for stage in queries.FUNNEL_STAGES
    }
    return [
        step
        | {
            "label": labels[step["step"]],
            "count_text": number(step["count"]),
            "rate_text": percent(step["rate"]),
            "median_text": duration(step["median"]),
        }
        for step in queries.funnel_steps(counts)
    ]


def source_funnel_rows(
    by_source: dict[str, dict[str, list]], filters: queries.Filters
) -> list[dict[str, Any]]:
    """One row per source (most leads first): the step counts and lead → MQL, MQL → won."""
    rows = []
    for source, counts in by_source.items():
        steps = queries.funnel_steps(counts)
        leads, mql, won = steps[0]["count"], steps[1]["count"], steps[-1]["count"]
        rows.append(
            {
                "source": source,
                "query": filter_query(filters, source=source) if source else "",
                "counts": [number(s["count"]) for s in steps],
                "leads": leads,
                "to_mql": percent(queries.share(mql, leads)),
                "to_won": percent(queries.share(won, mql)),
            }
        )
    rows.sort(key=lambda r: (-r["leads"], r["source"]))
    return rows[:SOURCES_SHOWN]


def sla_sections(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """First contact (per IS rep) and sales acceptance (per sales rep), with totals."""
    sections = []
    for kind, title in (
        (HandoffKind.INSIDE_SALES, _("First contact (per IS rep)")),
        (HandoffKind.SALES, _("Sales acceptance (per sales rep)")),
    ):
        reps = [_sla_row(r) for r in rows if r["kind"] == kind]
        total = _sla_row({**queries.sla_totals(rows, kind), "assignee": None})
        sections.append({"kind": str(kind), "title": title, "rows": reps, "total": total})
    return sections


def _sla_row(row: dict[str, Any]) -> dict[str, Any]:
    share = queries.share(row["met"], row["met"] + row["breached"])
    return {
        "assignee": row["assignee"] or _("Unassigned"),
        "met": row["met"],
        "breached": row["breached"],
        "pending": row["pending"],
        "share": share,
        "share_text": percent(share),
    }


def reason_rows(reasons: dict[str, int]) -> list[dict[str, Any]]:
    """Every reject reason code (zeros too), in the order of the reason list."""
    return [
        {"code": code, "label": str(label), "count": n, "count_text": number(n)}
        for code, label in RejectReason.choices
        for n in [reasons.get(code, 0)]
    ]


def answer_rows(rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], str]:
    """Sales answers per source or rule with the rejection rate, and the overall rate."""
    accepted = sum(r["accepted"] for r in rows)
    rejected = sum(r["rejected"] for r in rows)
    average = queries.share(rejected, accepted + rejected)
    shaped = []
    for row in rows:
        rate = queries.share(row["rejected"], row["accepted"] + row["rejected"])
        shaped.append(
            row
            | {
                "kind_label": RULE_KIND_LABELS.get(row.get("kind", ""), ""),
                "rate_text": percent(rate),
                "above_average": rate is not None and average is not None and rate > average,
                "reason_counts": [row["reasons"].get(code, 0) for code in RejectReason.values],
            }
        )
    return shaped, percent(average)


def rejection_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    labels = dict(RejectReason.choices)
    return [row | {"reason_label": labels.get(row["reason"], row["reason"])} for row in rows]


def track_rows(tracks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    from nurturing.models import TrackKind, TrackStatus

    kinds, statuses = dict(TrackKind.choices), dict(TrackStatus.choices)
    rows = []
    for track in tracks:
        kpis = track["kpis"]
        rates = {
            f"{name}_text": percent(kpis.get(name))
            for name in ("open_rate", "click_rate", "unsubscribe_rate", "mql_rate")
        }
        rows.append(
            track
            | rates
            | {
                "kind_label": kinds.get(track["kind"], track["kind"]),
                "status_label": statuses.get(track["status"], track["status"]),
                "opportunity_rate_text": percent(kpis.get("opportunity_rate")),
            }
        )
    return rows


# --- formatting -----------------------------------------------------------------------------


def number(value: int) -> str:
    return formats.number_format(value, force_grouping=True)


def percent(rate: float | None) -> str:
    """42.9% (one decimal); a dash where there is nothing to divide by."""
    if rate is None:
        return "—"
    # number_format cuts digits off; round first so 2/3 shows as 66.7%.
    return f"{formats.number_format(round(rate * 100, 1), 1)}%"


def duration(seconds: float | None) -> str:
    """Calendar time, to the minute: 3d 4h, 5h 07m, 12m; a dash when unknown."""
    if seconds is None:
        return "—"
    minutes = max(0, int(seconds // 60))
    days, minutes = divmod(minutes, 24 * 60)
    hours, minutes = divmod(minutes, 60)
    if days:
        return _("%(days)dd %(hours)dh") % {"days": days, "hours": hours}
    if hours:
        return _("%(hours)dh %(minutes)02dm") % {"hours": hours, "minutes": minutes}
    return _("%(minutes)dm") % {"minutes": minutes}


# Horizontal bars in SVG user units: a label column, the bar, its value after it.
CHART_WIDTH, LABEL_WIDTH, VALUE_WIDTH = 640, 170, 80
BAR_HEIGHT, BAR_GAP = 24, 10


def bar_chart(items: list[tuple[str, int, str]]) -> dict[str, Any]:
    """Geometry for `leadops/dashboard_bars.html`: (label, value, value text) per bar,
    bar lengths proportional to the largest value."""
    largest = max((value for _label, value, _text in items), default=0)
    plot = CHART_WIDTH - LABEL_WIDTH - VALUE_WIDTH
    bars = []
    for index, (label, value, text) in enumerate(items):
        length = round(plot * value / largest, 1) if largest else 0
        y = index * (BAR_HEIGHT + BAR_GAP)
        bars.append(
            {
                "label": label,
                "text": text,
                "y": y,
                "text_y": round(y + BAR_HEIGHT * 0.7, 1),
                "width": length,
                "value_x": LABEL_WIDTH + length + 6,
            }
        )
    return {
        # What a screen reader hears for the whole chart (role="img"): every value.
        "summary": "; ".join(f"{label}: {text}" for label, _value, text in items),
        "width": CHART_WIDTH,
        "height": max(len(items) * (BAR_HEIGHT + BAR_GAP) - BAR_GAP, BAR_HEIGHT),
        "bar_x": LABEL_WIDTH,
        "label_x": LABEL_WIDTH - 8,
        "bar_height": BAR_HEIGHT,
        "bars": bars,
    }
