"""Admin of website capture: the public forms (editable), visitors and anonymous views
(read-only: the snippet writes them)."""

from __future__ import annotations

import re
from typing import Any

from django import forms
from django.conf import settings
from django.contrib import admin
from django.core.exceptions import ValidationError
from django.db import models
from django.http import HttpRequest
from django.urls import reverse
from django.utils.translation import gettext_lazy as _

from leadops.admin import PlannerCountPaginator
from nurturing.capture import clean_origin, forget_capture_origins
from nurturing.models import AnonymousPageView, WebForm, WebVisitor


class OriginListField(forms.CharField):
    """A list of site origins edited as text, one per line (commas and spaces work too)."""

    widget = forms.Textarea(attrs={"rows": 4, "cols": 60})

    def prepare_value(self, value: Any) -> Any:
        return "\n".join(value) if isinstance(value, list | tuple) else value

    def to_python(self, value: Any) -> list[str]:
        text = super().to_python(value)
        return [item for item in re.split(r"[\s,]+", text) if item]

    def validate(self, value: list[str]) -> None:
        super().validate(value)
        errors = []
        for item in value:
            try:
                clean_origin(item)
            except ValidationError as exc:
                errors.extend(exc.error_list)
        if errors:
            raise ValidationError(errors)

    def clean(self, value: Any) -> list[str]:
        origins = super().clean(value)
        return list(dict.fromkeys(clean_origin(item) for item in origins))


class WebFormAdminForm(forms.ModelForm):
    allowed_origins = OriginListField(
        label=_("allowed origins"),
        required=False,
        help_text=_(
            "One per line, e.g. https://www.example.co.jp (no path). Posts from other sites "
            "are refused; sites in LEADOPS_CAPTURE_ORIGINS are allowed for every form."
        ),
    )

    class Meta:
        model = WebForm
        fields = ("name", "slug", "allowed_origins", "source", "active")


@admin.register(WebForm)
class WebFormAdmin(admin.ModelAdmin):
    form = WebFormAdminForm
    list_display = ("name", "slug", "origins", "source", "active", "created_at")
    list_filter = ("active",)
    search_fields = ("name", "slug")
    prepopulated_fields = {"slug": ("name",)}
    readonly_fields = ("post_address",)

    @admin.display(description=_("allowed origins"))
    def origins(self, form: WebForm) -> str:
        return ", ".join(form.allowed_origins)

    @admin.display(description=_("post address"))
    def post_address(self, form: WebForm) -> str:
        if not form.pk:
            return "—"
        return settings.SITE_URL + reverse("capture-form", args=[form.slug])

    def save_model(self, request: HttpRequest, obj: WebForm, form: Any, change: bool) -> None:
        super().save_model(request, obj, form, change)
        # This process answers with the new list at once; others within their cache time.
        forget_capture_origins()


class _ReadOnlyAdmin(admin.ModelAdmin):
    # Page addresses are shown as stored; the form field only needs a scheme to assume.
    formfield_overrides = {models.URLField: {"assume_scheme": "https"}}
    show_full_result_count = False
    paginator = PlannerCountPaginator
    ordering = ("-id",)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(WebVisitor)
class WebVisitorAdmin(_ReadOnlyAdmin):
    list_display = ("visitor_id", "lead", "first_seen_at", "identified_at")
    list_select_related = ("lead",)
    raw_id_fields = ("lead",)
    search_fields = ("=visitor_id", "=lead__email")


class MergedFilter(admin.SimpleListFilter):
    title = _("merge state")
    parameter_name = "merged"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("yes", _("Merged into a lead")), ("no", _("Still anonymous"))]

    def queryset(self, request: HttpRequest, queryset):
        if self.value() in ("yes", "no"):
            return queryset.filter(merged_at__isnull=self.value() == "no")
        return queryset


@admin.register(AnonymousPageView)
class AnonymousPageViewAdmin(_ReadOnlyAdmin):
    list_display = ("occurred_at", "url", "title", "visitor", "merged_at")
    list_filter = (MergedFilter,)
    list_select_related = ("visitor",)
    raw_id_fields = ("visitor",)
