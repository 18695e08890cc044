"""Admin of the lead core, and of users and their roles.

Tables here reach millions of rows (leads) and far more (activities), so lists never
show a full count, page by primary key, and count big result sets from the planner.
"""

from __future__ import annotations

from django import forms
from django.contrib import admin
from django.contrib.admin.views.autocomplete import AutocompleteJsonView
from django.contrib.auth import get_user_model
from django.contrib.auth.admin import UserAdmin
from django.contrib.auth.forms import AdminUserCreationForm, UserChangeForm
from django.core.paginator import Paginator
from django.db import transaction
from django.db.models import QuerySet
from django.forms.models import BaseInlineFormSet
from django.http import HttpRequest
from django.utils.functional import cached_property
from django.utils.translation import gettext_lazy as _

from leadops.admin_csv import LeadCsvAdminMixin
from leadops.models import Account, Activity, Lead
from leadops.roles import ROLE_LABELS, Role, assign_role, roles_of, sees_only_own_leads
from leadops.services import normalize_email, notify_leads_changed
from leadops.sql import planner_row_estimate
from scoring.services.explain import lead_explanation

User = get_user_model()

admin.site.site_header = "LeadOps"
admin.site.site_title = "LeadOps"
admin.site.index_title = _("Lead operations")


class PlannerCountPaginator(Paginator):
    """Exact counts for small results; PostgreSQL's row estimate for big ones.

    `COUNT(*)` over millions of rows takes seconds and the admin runs it on every list
    page. Above `EXACT_BELOW` estimated rows, the page count is only an estimate.
    """

    EXACT_BELOW = 50_000

    @cached_property
    def count(self) -> int:
        if not isinstance(self.object_list, QuerySet):
            return super().count
        estimate = planner_row_estimate(self.object_list)
        return estimate if estimate >= self.EXACT_BELOW else super().count


class BigTableAdmin(admin.ModelAdmin):
    paginator = PlannerCountPaginator
    show_full_result_count = False
    date_hierarchy = None


# --- leads ---------------------------------------------------------------------------


class LeadAdminForm(forms.ModelForm):
    class Meta:
        model = Lead
        # The admin's fieldsets decide the fields; stage and scores are read-only there.
        fields = (
            "email",
            "last_name",
            "first_name",
            "account",
            "title",
            "phone",
            "region",
            "job_level",
            "department",
            "industry",
            "employee_count",
            "source",
            "consent",
            "unsubscribed",
            "owner",
        )

    def clean_email(self) -> str:
        # Stored lower-cased (a check constraint holds us to it), as every writer does.
        return normalize_email(self.cleaned_data["email"])


class RecentActivitiesFormSet(BaseInlineFormSet):
    """Only the newest activities: a lead may have thousands."""

    LIMIT = 50

    def get_queryset(self) -> QuerySet:
        if not hasattr(self, "_recent"):
            self._recent = super().get_queryset().order_by("-occurred_at", "-id")[: self.LIMIT]
        return self._recent


class RecentActivityInline(admin.TabularInline):
    model = Activity
    formset = RecentActivitiesFormSet
    fields = ("occurred_at", "type", "source", "properties")
    readonly_fields = fields
    extra = 0
    max_num = 0
    can_delete = False
    show_change_link = True
    verbose_name_plural = _("recent activities (newest 50)")

    def has_add_permission(self, request: HttpRequest, obj=None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj=None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj=None) -> bool:
        return False


@admin.register(Lead)
class LeadAdmin(LeadCsvAdminMixin, BigTableAdmin):
    form = LeadAdminForm
    list_display = (
        "email",
        "full_name",
        "company",
        "stage",
        "score",
        "temperature",
        "owner",
        "last_activity_at",
    )
    list_select_related = ("account", "owner")
    list_filter = ("stage", "temperature", "source", "industry", "job_level", "owner")
    search_fields = ("email", "first_name", "last_name", "account__name")
    autocomplete_fields = ("owner", "account")
    # Scoring owns the scores, the hand-off owns the stage.
    readonly_fields = (
        "stage",
        "attribute_score",
        "behavior_score",
        "score",
        "temperature",
        "last_activity_at",
        "created_at",
        "updated_at",
    )
    fieldsets = (
        (None, {"fields": ("email", "last_name", "first_name", "account", "title", "phone")}),
        (
            _("Profile"),
            {"fields": ("job_level", "department", "industry", "employee_count", "region")},
        ),
        (_("Source and consent"), {"fields": ("source", "consent", "unsubscribed")}),
        (_("Owner and stage"), {"fields": ("owner", "stage")}),
        (
            _("Score"),
            {"fields": ("score", "attribute_score", "behavior_score", "temperature")},
        ),
        (_("Dates"), {"fields": ("last_activity_at", "created_at", "updated_at")}),
    )
    inlines = (RecentActivityInline,)
    actions = ["export_csv"]

    def save_model(self, request: HttpRequest, obj: Lead, form, change: bool) -> None:
        super().save_model(request, obj, form, change)
        # Field edits move the attribute score: rescore once the save is committed.
        transaction.on_commit(lambda: notify_leads_changed([obj.pk]))

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        # A sales rep's admin holds only their own leads: others' are "not found".
        return super().get_queryset(request).visible_to(request.user)

    def render_change_form(
        self, request: HttpRequest, context, add=False, change=False, form_url="", obj=None
    ):
        # The change page explains the score (templates/admin/leadops/lead/change_form.html).
        if obj is not None:
            context["score_explanation"] = lead_explanation(obj)
        return super().render_change_form(request, context, add, change, form_url, obj)

    @admin.display(description=_("name"), ordering="last_name")
    def full_name(self, lead: Lead) -> str:
        return f"{lead.last_name} {lead.first_name}".strip()

    @admin.display(description=_("company"), ordering="account__name")
    def company(self, lead: Lead) -> str:
        return lead.company


@admin.register(Account)
class AccountAdmin(BigTableAdmin):
    list_display = ("name", "domain", "industry", "employee_count", "created_at")
    list_filter = ("industry",)
    search_fields = ("name", "domain")
    ordering = ("name",)


@admin.register(Activity)
class ActivityAdmin(BigTableAdmin):
    """Activities are facts sent by the outside world: nobody adds, edits or deletes them."""

    list_display = ("occurred_at", "type", "lead", "source", "event_id")
    list_filter = ("type",)
    list_select_related = ("lead",)
    # Exact matches only: both are indexed, a substring search over events is not.
    search_fields = ("=event_id", "=lead__email")
    search_help_text = _("Exact event id or lead email.")
    # Newest first by primary key: sorting by another column would sort the whole table.
    ordering = ("-id",)
    sortable_by = ()
    readonly_fields = (
        "lead",
        "type",
        "occurred_at",
        "properties",
        "event_id",
        "source",
        "received_at",
    )
    fields = readonly_fields

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        queryset = super().get_queryset(request)
        if sees_only_own_leads(request.user):
            return queryset.filter(lead__owner=request.user)
        return queryset

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj=None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj=None) -> bool:
        return False


# --- users and roles -------------------------------------------------------------------

ROLE_CHOICES = [("", _("(no role)")), *((role, ROLE_LABELS[role]) for role in Role.ALL)]


class RoleFieldMixin(forms.Form):
    role = forms.ChoiceField(
        label=_("role"),
        choices=ROLE_CHOICES,
        required=False,
        help_text=_("What the user does in LeadOps; it decides what they may see and change."),
    )

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if self.instance.pk:
            current = sorted(roles_of(self.instance))
            self.fields["role"].initial = current[0] if current else ""


class UserRoleChangeForm(RoleFieldMixin, UserChangeForm):
    pass


class UserRoleCreationForm(RoleFieldMixin, AdminUserCreationForm):
    pass


class RoleListFilter(admin.SimpleListFilter):
    title = _("role")
    parameter_name = "role"

    def lookups(self, request: HttpRequest, model_admin) -> list[tuple[str, str]]:
        return [(role, ROLE_LABELS[role]) for role in Role.ALL]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        if self.value() in Role.ALL:
            return queryset.filter(groups__name=self.value())
        return queryset


admin.site.unregister(User)


@admin.register(User)
class LeadOpsUserAdmin(UserAdmin):
    form = UserRoleChangeForm
    add_form = UserRoleCreationForm
    list_display = ("username", "email", "last_name", "first_name", "role", "is_staff", "is_active")
    list_filter = (RoleListFilter, "is_staff", "is_superuser", "is_active", "groups")
    fieldsets = (
        (None, {"fields": ("username", "password")}),
        (_("Role"), {"fields": ("role",)}),
        (_("Personal info"), {"fields": ("last_name", "first_name", "email")}),
        (_("Permissions"), {"fields": ("is_active", "is_staff", "is_superuser")}),
        (_("Important dates"), {"fields": ("last_login", "date_joined")}),
    )
    add_fieldsets = (
        (
            None,
            {
                "classes": ("wide",),
                "fields": ("username", "usable_password", "password1", "password2", "role"),
            },
        ),
    )

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        return super().get_queryset(request).prefetch_related("groups")

    @admin.display(description=_("role"))
    def role(self, user) -> str:
        names = [g.name for g in user.groups.all() if g.name in ROLE_LABELS]
        return ", ".join(str(ROLE_LABELS[name]) for name in sorted(names)) or "-"

    def save_model(self, request: HttpRequest, obj, form, change: bool) -> None:
        if not change and form.cleaned_data.get("role"):
            obj.is_staff = True  # every role works in the admin, within its permissions
        super().save_model(request, obj, form, change)

    def save_related(self, request: HttpRequest, form, formsets, change: bool) -> None:
        super().save_related(request, form, formsets, change)
        assign_role(form.instance, role=form.cleaned_data.get("role") or None)


# --- picking a lead's owner ------------------------------------------------------------


class LeadOpsAutocompleteJsonView(AutocompleteJsonView):
    """Whoever may edit leads may pick an owner, without the right to browse users."""

    def _is_lead_owner_lookup(self) -> bool:
        return self.source_field.model is Lead and self.source_field.name == "owner"

    def has_perm(self, request: HttpRequest, obj=None) -> bool:
        if self._is_lead_owner_lookup():
            lead_admin = self.admin_site.get_model_admin(Lead)
            return lead_admin.has_change_permission(request) or lead_admin.has_add_permission(
                request
            )
        return super().has_perm(request, obj)

    def get_queryset(self) -> QuerySet:
        queryset = super().get_queryset()
        if self._is_lead_owner_lookup():
            return queryset.filter(is_active=True, is_staff=True)
        return queryset


def _autocomplete_view(request: HttpRequest):
    return LeadOpsAutocompleteJsonView.as_view(admin_site=admin.site)(request)


# The default site's URLs are built after every admin module is imported, so this
# replaces the view the "autocomplete/" URL serves.
admin.site.autocomplete_view = _autocomplete_view
