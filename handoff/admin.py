"""Admin of the hand-off: the team's settings and rules, and read-only records.

Editable: the hand-off settings (one row), company holidays, rep availability,
assignment rules and webhooks. Read-only: hand-offs, stage transitions, contact
attempts, notes, notifications and deliveries (those change only through services;
a failed delivery can be retried from its list).
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from django import forms
from django.contrib import admin, messages
from django.contrib.auth import get_user_model
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.urls import reverse
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext

from handoff import notifications
from handoff.models import (
    AssignmentRule,
    CompanyHoliday,
    ContactAttempt,
    Delivery,
    DeliveryStatus,
    Handoff,
    HandoffPolicy,
    LeadNote,
    Notification,
    NotificationKind,
    RepProfile,
    StageTransition,
    WebhookEndpoint,
)
from handoff.webhooks import validate_webhook_url
from leadops.admin import PlannerCountPaginator
from leadops.models import Industry
from leadops.roles import Role, sees_only_own_leads
from leadops.services import normalize_email

WEEKDAYS = [
    (0, _("Monday")),
    (1, _("Tuesday")),
    (2, _("Wednesday")),
    (3, _("Thursday")),
    (4, _("Friday")),
    (5, _("Saturday")),
    (6, _("Sunday")),
]
POLICY_PK = 1


class _ReadOnlyAdmin(admin.ModelAdmin):
    """Records written by services: listed and shown, never added, edited or deleted here."""

    paginator = PlannerCountPaginator
    show_full_result_count = False

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class _LeadRecordAdmin(_ReadOnlyAdmin):
    """Records of one lead: searched by the lead's exact email, limited like leads are."""

    search_fields = ("lead__email",)
    search_help_text = _("Exact lead email.")

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        queryset = super().get_queryset(request)
        if sees_only_own_leads(request.user):
            return queryset.filter(lead__owner=request.user)
        return queryset

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet, search_term: str
    ) -> tuple[QuerySet, bool]:
        # Emails are stored lower-cased: an exact match uses the unique index, where the
        # default icontains would scan every lead.
        term = normalize_email(search_term)
        return (queryset.filter(lead__email=term) if term else queryset), False


# --- the team's settings ---------------------------------------------------------------


class HandoffPolicyForm(forms.ModelForm):
    workdays = forms.TypedMultipleChoiceField(
        label=_("working days"),
        choices=WEEKDAYS,
        coerce=int,
        widget=forms.CheckboxSelectMultiple,
        error_messages={"required": _("Choose at least one working day.")},
    )

    class Meta:
        model = HandoffPolicy
        fields = (
            "time_zone",
            "workdays",
            "day_start",
            "day_end",
            "observe_japanese_holidays",
            "first_contact_sla_hours",
            "acceptance_sla_hours",
            "warning_percent",
            "assignment_mode",
            "default_is_capacity",
            "reassign_on_breach",
        )

    def clean_time_zone(self) -> str:
        name = self.cleaned_data["time_zone"].strip()
        try:
            ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise forms.ValidationError(
                _("Unknown time zone %(name)s; use a name such as Asia/Tokyo."),
                params={"name": name},
            ) from exc
        return name

    def clean_workdays(self) -> list[int]:
        return sorted(set(self.cleaned_data["workdays"]))

    def clean_warning_percent(self) -> int:
        value = self.cleaned_data["warning_percent"]
        if not 1 <= value <= 99:
            raise forms.ValidationError(_("Enter a percentage from 1 to 99."))
        return value

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        for name in ("first_contact_sla_hours", "acceptance_sla_hours"):
            if data.get(name) == 0:
                self.add_error(name, _("An SLA needs at least one business hour."))
        start, end = data.get("day_start"), data.get("day_end")
        if start and end and start >= end:
            self.add_error("day_end", _("The working day must end after it starts."))
        return data


@admin.register(HandoffPolicy)
class HandoffPolicyAdmin(admin.ModelAdmin):
    """One row (pk=1): the list opens it, created with the defaults when missing."""

    form = HandoffPolicyForm
    fieldsets = (
        (
            _("Business calendar"),
            {
                "fields": (
                    "time_zone",
                    "workdays",
                    "day_start",
                    "day_end",
                    "observe_japanese_holidays",
                )
            },
        ),
        (
            _("SLAs"),
            {"fields": ("first_contact_sla_hours", "acceptance_sla_hours", "warning_percent")},
        ),
        (
            _("Assignment"),
            {"fields": ("assignment_mode", "default_is_capacity", "reassign_on_breach")},
        ),
    )

    def has_add_permission(self, request: HttpRequest) -> bool:
        return super().has_add_permission(request) and not HandoffPolicy.objects.exists()

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def save_model(self, request: HttpRequest, obj: HandoffPolicy, form: Any, change: bool) -> None:
        # The services read pk=1: a row added here must be that one, not a second.
        obj.pk = POLICY_PK
        super().save_model(request, obj, form, change)

    def changelist_view(self, request: HttpRequest, extra_context=None) -> HttpResponse:
        if not self.has_view_or_change_permission(request):
            return super().changelist_view(request, extra_context)  # answers 403
        self._ensure_policy()
        url = reverse("admin:handoff_handoffpolicy_change", args=[POLICY_PK])
        return HttpResponseRedirect(url)

    def change_view(
        self, request: HttpRequest, object_id: str, form_url: str = "", extra_context=None
    ) -> HttpResponse:
        if object_id == str(POLICY_PK) and self.has_view_or_change_permission(request):
            self._ensure_policy()
        return super().change_view(request, object_id, form_url, extra_context)

    def _ensure_policy(self) -> None:
        from handoff.services.calendar import get_policy

        get_policy()  # creates the row with the defaults on first use


@admin.register(CompanyHoliday)
class CompanyHolidayAdmin(admin.ModelAdmin):
    list_display = ("date", "name")
    date_hierarchy = "date"
    search_fields = ("name",)


@admin.register(RepProfile)
class RepProfileAdmin(admin.ModelAdmin):
    list_display = ("user", "available", "capacity", "last_assigned_at")
    list_editable = ("available", "capacity")
    list_filter = ("available",)
    list_select_related = ("user",)
    search_fields = ("user__username", "user__last_name", "user__first_name")
    readonly_fields = ("last_assigned_at",)
    autocomplete_fields = ("user",)


def _split_regions(text: str) -> list[str]:
    # Commas (ASCII or Japanese 、，) or line breaks separate regions.
    return list(dict.fromkeys(p.strip() for p in re.split(r"[,\n、，]", text) if p.strip()))


class AssignmentRuleForm(forms.ModelForm):
    industries = forms.TypedMultipleChoiceField(
        label=_("industries"),
        choices=Industry.choices,
        required=False,
        widget=forms.CheckboxSelectMultiple,
        help_text=_("None checked matches any industry."),
    )
    regions = forms.CharField(
        label=_("regions"),
        required=False,
        widget=forms.Textarea(attrs={"rows": 2, "cols": 40}),
        help_text=_(
            "Prefectures or regions as written on leads, separated by commas or lines; "
            "empty matches any."
        ),
    )

    class Meta:
        model = AssignmentRule
        fields = (
            "name",
            "priority",
            "active",
            "industries",
            "min_employees",
            "max_employees",
            "regions",
            "reps",
        )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.instance.pk and not self.is_bound:
            self.initial["regions"] = "\n".join(self.instance.regions or [])

    def clean_regions(self) -> list[str]:
        regions = _split_regions(self.cleaned_data.get("regions") or "")
        if any(len(region) > 50 for region in regions):
            raise forms.ValidationError(_("A region is at most 50 characters."))
        return regions

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        low, high = data.get("min_employees"), data.get("max_employees")
        if low is not None and high is not None and low > high:
            self.add_error(
                "max_employees", _("“Employees at most” must not be below “employees at least”.")
            )
        return data


@admin.register(AssignmentRule)
class AssignmentRuleAdmin(admin.ModelAdmin):
    form = AssignmentRuleForm
    list_display = ("name", "priority", "active", "industry_list", "employees", "region_list")
    list_editable = ("priority", "active")
    list_filter = ("active",)
    filter_horizontal = ("reps",)

    def formfield_for_manytomany(self, db_field, request: HttpRequest, **kwargs: Any):
        if db_field.name == "reps":
            # Rules hand leads to inside sales: only active IS reps are offered.
            kwargs["queryset"] = (
                get_user_model()
                .objects.filter(is_active=True, groups__name=Role.INSIDE_SALES)
                .order_by("username")
                .distinct()
            )
        return super().formfield_for_manytomany(db_field, request, **kwargs)

    @admin.display(description=_("industries"))
    def industry_list(self, rule: AssignmentRule) -> str:
        labels = dict(Industry.choices)
        return ", ".join(str(labels.get(code, code)) for code in rule.industries) or "-"

    @admin.display(description=_("employees"))
    def employees(self, rule: AssignmentRule) -> str:
        if rule.min_employees is None and rule.max_employees is None:
            return "-"
        low = "" if rule.min_employees is None else rule.min_employees
        high = "" if rule.max_employees is None else rule.max_employees
        return f"{low}–{high}"

    @admin.display(description=_("regions"))
    def region_list(self, rule: AssignmentRule) -> str:
        return ", ".join(rule.regions) or "-"


# --- hand-offs and what happened on them ----------------------------------------------


@admin.register(Handoff)
class HandoffAdmin(_LeadRecordAdmin):
    list_display = (
        "id",
        "lead",
        "kind",
        "status",
        "assignee",
        "sla_state",
        "due_at",
        "opened_at",
        "outcome",
    )
    list_filter = ("kind", "status", "sla_state", "assignee")
    list_select_related = ("lead", "assignee")
    ordering = ("-id",)
    raw_id_fields = ("lead", "assignee", "opened_by")


@admin.register(StageTransition)
class StageTransitionAdmin(_LeadRecordAdmin):
    list_display = ("created_at", "lead", "from_stage", "to_stage", "actor", "score_snapshot")
    list_filter = ("to_stage", "from_stage")
    list_select_related = ("lead", "actor")
    ordering = ("-id",)


@admin.register(ContactAttempt)
class ContactAttemptAdmin(_LeadRecordAdmin):
    list_display = ("created_at", "lead", "actor", "channel", "outcome")
    list_filter = ("channel", "outcome")
    list_select_related = ("lead", "actor")
    ordering = ("-id",)


@admin.register(LeadNote)
class LeadNoteAdmin(_LeadRecordAdmin):
    list_display = ("created_at", "lead", "author", "__str__")
    list_select_related = ("lead", "author")
    ordering = ("-id",)


# --- notifications ---------------------------------------------------------------------


@admin.register(Notification)
class NotificationAdmin(_ReadOnlyAdmin):
    list_display = ("created_at", "recipient", "kind", "title", "read_at")
    list_filter = ("kind",)
    list_select_related = ("recipient",)
    search_fields = ("=event_key", "=recipient__username")
    search_help_text = _("Exact event (e.g. mql_assigned:42) or user name.")
    ordering = ("-id",)
    raw_id_fields = ("recipient", "lead", "handoff")


class WebhookEndpointForm(forms.ModelForm):
    url = forms.URLField(
        label=_("URL"),
        max_length=500,
        assume_scheme="https",
        help_text=_("HTTPS only; the host must be on the public internet."),
    )
    kinds = forms.TypedMultipleChoiceField(
        label=_("events"),
        choices=NotificationKind.choices,
        required=False,
        widget=forms.CheckboxSelectMultiple,
        help_text=_("None checked posts every kind."),
    )

    class Meta:
        model = WebhookEndpoint
        fields = ("name", "url", "active", "kinds")

    def clean_url(self) -> str:
        url = self.cleaned_data["url"].strip()
        # The same check as every send: HTTPS, and only public addresses.
        validate_webhook_url(url)
        return url


@admin.register(WebhookEndpoint)
class WebhookEndpointAdmin(admin.ModelAdmin):
    form = WebhookEndpointForm
    list_display = ("name", "host", "active", "kind_list", "created_at")
    list_filter = ("active",)

    @admin.display(description=_("host"))
    def host(self, endpoint: WebhookEndpoint) -> str:
        # The path of a Slack webhook URL is its secret: the list shows only the host.
        return urlsplit(endpoint.url).hostname or ""

    @admin.display(description=_("events"))
    def kind_list(self, endpoint: WebhookEndpoint) -> str:
        labels = dict(NotificationKind.choices)
        return ", ".join(str(labels.get(k, k)) for k in endpoint.kinds) or _("all")


@admin.register(Delivery)
class DeliveryAdmin(_ReadOnlyAdmin):
    list_display = (
        "created_at",
        "event_key",
        "channel",
        "recipient",
        "status",
        "attempts",
        "next_attempt_at",
        "sent_at",
        "short_error",
    )
    list_filter = ("status", "channel")
    list_select_related = ("endpoint",)
    search_fields = ("=event_key", "=target")
    search_help_text = _("Exact event (e.g. sla_breached:42) or email address.")
    ordering = ("-id",)
    raw_id_fields = ("notification", "endpoint")
    actions = ("retry_now",)

    @admin.display(description=_("sent to"))
    def recipient(self, delivery: Delivery) -> str:
        return delivery.endpoint.name if delivery.endpoint_id else delivery.target

    @admin.display(description=_("last error"))
    def short_error(self, delivery: Delivery) -> str:
        error = delivery.last_error
        return error if len(error) <= 80 else error[:79] + "…"

    def has_retry_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("handoff.change_delivery")

    @admin.action(description=_("Retry the selected failed deliveries now"), permissions=["retry"])
    def retry_now(self, request: HttpRequest, queryset: QuerySet) -> None:
        failed = list(queryset.filter(status=DeliveryStatus.FAILED).values_list("pk", flat=True))
        for delivery_id in failed:
            notifications.retry_delivery(delivery_id)
        skipped = queryset.count() - len(failed)
        if failed:
            self.message_user(
                request,
                ngettext(
                    "%(count)d delivery will be retried now.",
                    "%(count)d deliveries will be retried now.",
                    len(failed),
                )
                % {"count": len(failed)},
            )
        if skipped:
            self.message_user(
                request,
                ngettext(
                    "%(count)d delivery was not failed and was left as it is.",
                    "%(count)d deliveries were not failed and were left as they are.",
                    skipped,
                )
                % {"count": skipped},
                level=messages.WARNING,
            )
