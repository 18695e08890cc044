"""Admin of scoring: marketers edit drafts with inline rules, preview, activate, archive.

Only drafts are editable; an active or archived model is shown read-only with a "clone
into a draft" button. Buttons call services; the activation page refreshes itself until
the rescore of every lead is done.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import JSONField
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy

from leadops.admin import PlannerCountPaginator
from scoring import services
from scoring.exceptions import ActivationInProgress, ActivationRefused
from scoring.models import (
    ActivationJob,
    AttributeRule,
    BehaviorRule,
    JobStatus,
    ScoreChange,
    ScoringModel,
    TriggerRule,
)

SMALL_JSON = forms.Textarea(attrs={"rows": 2, "cols": 36})


class _DraftOnlyInline:
    """Rules can be added, changed and deleted only while their model is a draft."""

    extra = 0

    def _editable(self, obj: ScoringModel | None) -> bool:
        return obj is None or obj.is_editable

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return super().has_add_permission(request, obj) and self._editable(obj)

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return super().has_change_permission(request, obj) and self._editable(obj)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return super().has_delete_permission(request, obj) and self._editable(obj)


class AttributeRuleInline(_DraftOnlyInline, admin.TabularInline):
    model = AttributeRule
    fields = ("position", "label", "field", "operator", "value", "points")
    formfield_overrides = {JSONField: {"widget": SMALL_JSON}}


class BehaviorRuleInline(_DraftOnlyInline, admin.TabularInline):
    model = BehaviorRule
    fields = (
        "position",
        "label",
        "event_type",
        "conditions",
        "points",
        "daily_nth",
        "cap_per_lead",
        "cap_per_window",
        "window_days",
    )
    formfield_overrides = {JSONField: {"widget": SMALL_JSON}}


class TriggerRuleInline(_DraftOnlyInline, admin.TabularInline):
    model = TriggerRule
    fields = ("position", "label", "event_type", "conditions", "min_count", "within_days")
    formfield_overrides = {JSONField: {"widget": SMALL_JSON}}


@admin.register(ScoringModel)
class ScoringModelAdmin(admin.ModelAdmin):
    list_display = ("name", "version", "status", "activated_at", "created_at")
    list_filter = ("status",)
    readonly_fields = ("version", "status", "based_on", "created_by", "created_at", "activated_at")
    fieldsets = (
        (None, {"fields": ("name", "description", "version", "status", "based_on")}),
        (gettext_lazy("Temperature"), {"fields": ("warm_threshold", "hot_threshold")}),
        (
            gettext_lazy("MQL rule: total ≥ X, or behaviour ≥ Y and attribute ≥ Z"),
            {"fields": ("mql_total", "mql_behavior", "mql_attribute")},
        ),
        (gettext_lazy("Decay"), {"fields": ("decay_grace_days", "decay_half_life_days")}),
        (None, {"fields": ("created_by", "created_at", "activated_at")}),
    )
    inlines = (AttributeRuleInline, BehaviorRuleInline, TriggerRuleInline)
    change_form_template = "admin/scoring/scoringmodel/change_form.html"

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return super().has_change_permission(request, obj) and (obj is None or obj.is_editable)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return super().has_delete_permission(request, obj) and (obj is None or obj.is_editable)

    def save_model(self, request: HttpRequest, obj: ScoringModel, form: Any, change: bool) -> None:
        if not change:
            obj.version = services.next_version()
            obj.created_by = request.user
        super().save_model(request, obj, form, change)

    def get_urls(self) -> list:
        wrap = self.admin_site.admin_view
        own = [
            path("<int:pk>/clone/", wrap(self.clone_view), name="scoring_scoringmodel_clone"),
            path("<int:pk>/preview/", wrap(self.preview_view), name="scoring_scoringmodel_preview"),
            path(
                "<int:pk>/activate/", wrap(self.activate_view), name="scoring_scoringmodel_activate"
            ),
            path("<int:pk>/archive/", wrap(self.archive_view), name="scoring_scoringmodel_archive"),
        ]
        return own + super().get_urls()

    def _model_for(self, request: HttpRequest, pk: int, *, post: bool = True) -> ScoringModel:
        if not super().has_change_permission(request) or (post and request.method != "POST"):
            raise PermissionDenied
        return get_object_or_404(ScoringModel, pk=pk)

    def clone_view(self, request: HttpRequest, pk: int) -> HttpResponse:
        draft = services.clone_model(self._model_for(request, pk), actor=request.user)
        self.message_user(
            request, _("Draft v%s created: change it, preview it, activate it.") % draft.version
        )
        return HttpResponseRedirect(reverse("admin:scoring_scoringmodel_change", args=[draft.pk]))

    def preview_view(self, request: HttpRequest, pk: int) -> HttpResponse:
        model = self._model_for(request, pk, post=False)
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "original": model,
            "title": _("Preview of %s") % model,
            "preview": services.preview_model(model),
        }
        return TemplateResponse(request, "admin/scoring/scoringmodel/preview.html", context)

    def activate_view(self, request: HttpRequest, pk: int) -> HttpResponse:
        model = self._model_for(request, pk)
        try:
            job = services.activate_model(model, actor=request.user)
        except (ActivationRefused, ActivationInProgress) as exc:
            self.message_user(request, str(exc), level=messages.ERROR)
            return HttpResponseRedirect(reverse("admin:scoring_scoringmodel_change", args=[pk]))
        return HttpResponseRedirect(reverse("admin:scoring_activationjob_change", args=[job.pk]))

    def archive_view(self, request: HttpRequest, pk: int) -> HttpResponse:
        try:
            services.archive_model(self._model_for(request, pk))
        except ActivationRefused as exc:
            self.message_user(request, str(exc), level=messages.ERROR)
        return HttpResponseRedirect(reverse("admin:scoring_scoringmodel_change", args=[pk]))

    def render_change_form(self, request: HttpRequest, context: dict, *args, **kwargs):
        context["can_operate"] = super().has_change_permission(request)
        return super().render_change_form(request, context, *args, **kwargs)


class _ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(ActivationJob)
class ActivationJobAdmin(_ReadOnlyAdmin):
    list_display = ("model", "status", "progress", "actor", "created_at", "finished_at")
    list_filter = ("status",)
    fields = (
        "model",
        "previous_model",
        "actor",
        "status",
        "total",
        "done",
        "summary",
        "error",
        "created_at",
        "started_at",
        "finished_at",
    )
    change_form_template = "admin/scoring/activationjob/change_form.html"

    @admin.display(description=gettext_lazy("progress"))
    def progress(self, job: ActivationJob) -> str:
        return f"{job.progress_percent}%"

    def render_change_form(self, request: HttpRequest, context: dict, *args, **kwargs):
        context["running"] = context["original"].status == JobStatus.RUNNING
        return super().render_change_form(request, context, *args, **kwargs)


@admin.register(ScoreChange)
class ScoreChangeAdmin(_ReadOnlyAdmin):
    """The ledger: every change of every lead's score, with its rule and event."""

    list_display = ("created_at", "lead", "points", "reason", "rule_label", "model_version")
    list_filter = ("reason",)
    list_select_related = ("lead",)
    raw_id_fields = ("lead", "activity")
    search_fields = ("=lead__email",)
    show_full_result_count = False
    paginator = PlannerCountPaginator
    ordering = ("-id",)
