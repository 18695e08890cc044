"""Admin of segments, tracks with their steps, and enrollments (marketers edit, managers view).

A segment's conditions are edited as rows (field / operator / value) from the allowlist
of `nurturing.segments`, never as JSON; the change page counts the segment and shows a
sample as the rows change (htmx posts the rows to `preview/`). A track's steps are
inline; a template that does not compile is a form error. Buttons and actions call the
services of `nurturing.enrollment`.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.auth import get_user_model
from django.core.exceptions import PermissionDenied, ValidationError
from django.db.models import Count, QuerySet
from django.forms import formset_factory
from django.forms.models import BaseInlineFormSet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy, ngettext

from leadops.admin import BigTableAdmin
from leadops.models import EventType, Lead, Temperature
from nurturing import enrollment, segments
from nurturing.models import Enrollment, EnrollmentRule, Segment, Step, Track, TrackKind

# --- segment conditions as rows ------------------------------------------------------------

BLANK = [("", "---------")]
YES_WORDS = {"yes", "y", "true", "1", "はい"}
NO_WORDS = {"no", "n", "false", "0", "いいえ"}
LIST_SEPARATORS = (",", "、", "，")


class ConditionForm(forms.Form):
    """One row: a field and an operator from the allowlist, and the value they take."""

    field = forms.ChoiceField(
        label=gettext_lazy("field"),
        required=False,
        choices=BLANK + [(name, spec.label) for name, spec in segments.FIELDS.items()],
    )
    op = forms.ChoiceField(
        label=gettext_lazy("operator"),
        required=False,
        choices=BLANK + list(segments.OP_LABELS.items()),
    )
    value = forms.CharField(label=gettext_lazy("value"), required=False, max_length=10_000)
    value_to = forms.CharField(label=gettext_lazy("and"), required=False, max_length=30)
    event_type = forms.ChoiceField(
        label=gettext_lazy("activity type"),
        required=False,
        choices=[("", gettext_lazy("any activity")), *EventType.choices],
    )
    days = forms.IntegerField(
        label=gettext_lazy("in the last N days"),
        required=False,
        min_value=1,
        max_value=segments.MAX_DAYS,
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # The rows are a table whose column headers are the labels: name each input too.
        for field in self.fields.values():
            field.widget.attrs.setdefault("aria-label", field.label)

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        if self.errors or not self._filled(data):
            return data
        if not data.get("field"):
            raise ValidationError(_("Choose a field."))
        if not data.get("op"):
            raise ValidationError(_("Choose an operator."))
        try:
            data["condition"] = segments.clean_condition(row_to_condition(data))
        except ValidationError as exc:
            raise ValidationError(exc.messages) from None
        return data

    @staticmethod
    def _filled(data: dict[str, Any]) -> bool:
        return any(data.get(name) not in (None, "") for name in ("field", "op", "value", "days"))


class BaseConditionFormSet(forms.BaseFormSet):
    def conditions(self) -> list[dict[str, Any]]:
        """The cleaned conditions of the rows kept (call after is_valid)."""
        kept = [form for form in self.forms if form not in self.deleted_forms]
        return [form.cleaned_data["condition"] for form in kept if "condition" in form.cleaned_data]


ConditionFormSet = formset_factory(
    ConditionForm,
    formset=BaseConditionFormSet,
    extra=1,
    can_delete=True,
    max_num=segments.MAX_CONDITIONS,
    validate_max=True,
)


def row_to_condition(data: dict[str, Any]) -> dict[str, Any]:
    """A row's inputs as a condition for `segments.clean_condition` (which judges it)."""
    field, op = data["field"], data["op"]
    kind = segments.FIELDS[field].kind
    text = (data.get("value") or "").strip()
    if kind == "activity":
        value: Any = {"type": data.get("event_type") or "", "days": data.get("days")}
    elif op == "between":
        value = [text, (data.get("value_to") or "").strip()]
    elif op == "in":
        value = split_values(text)
    elif op == "empty":
        value = None
    elif kind == "bool":
        value = _yes_no(text)
    else:
        value = text
    return {"field": field, "op": op, "value": value}


def split_values(text: str) -> list[str]:
    for separator in LIST_SEPARATORS[1:]:
        text = text.replace(separator, LIST_SEPARATORS[0])
    return [item.strip() for item in text.split(LIST_SEPARATORS[0]) if item.strip()]


def _yes_no(text: str) -> bool | str:
    word = text.casefold()
    if word in YES_WORDS or word == str(_("yes")).casefold():
        return True
    if word in NO_WORDS or word == str(_("no")).casefold():
        return False
    return text


def condition_to_row(condition: Any) -> dict[str, Any]:
    """A stored condition as the inputs of a row (tolerant: stored JSON may be anything)."""
    if not isinstance(condition, dict):
        return {}
    row = {"field": condition.get("field", ""), "op": condition.get("op", "")}
    value = condition.get("value")
    if isinstance(value, dict):
        row.update(event_type=value.get("type") or "", days=value.get("days"))
    elif isinstance(value, bool):
        row["value"] = "yes" if value else "no"
    elif isinstance(value, list) and row["op"] == "between" and len(value) == 2:
        row.update(value=str(value[0]), value_to=str(value[1]))
    elif isinstance(value, list):
        row["value"] = ", ".join(map(str, value))
    elif value is not None:
        row["value"] = str(value)
    return row


def allowlist_for_editor() -> dict[str, Any]:
    """What the row editor's script needs: each field's kind, operators and known values."""
    yes_no = [["yes", str(_("yes"))], ["no", str(_("no"))]]
    owners = get_user_model().objects.filter(is_active=True, is_staff=True).order_by("username")
    fields = {}
    for name, spec in segments.FIELDS.items():
        values = [[code, str(label)] for code, label in spec.choices if spec.kind == "choice"]
        if spec.kind == "bool":
            values = yes_no
        if spec.kind == "owner":
            values = [
                [username, username] for username in owners.values_list("username", flat=True)[:500]
            ]
        fields[name] = {"kind": spec.kind, "ops": list(spec.ops), "values": values}
    return {"fields": fields}


class SegmentAdminForm(forms.ModelForm):
    """Name and description, plus the condition rows (a formset carried by the form)."""

    class Meta:
        model = Segment
        fields = ("name", "description")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        stored = self.instance.conditions if isinstance(self.instance.conditions, list) else []
        self.conditions_formset = ConditionFormSet(
            data=self.data if self.is_bound else None,
            prefix="conditions",
            initial=[condition_to_row(condition) for condition in stored],
        )

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        if not self.conditions_formset.is_valid():
            raise ValidationError(_("Some conditions are not valid: see the messages beside them."))
        self.instance.conditions = self.conditions_formset.conditions()
        return cleaned


@admin.register(Segment)
class SegmentAdmin(admin.ModelAdmin):
    form = SegmentAdminForm
    list_display = ("name", "summary", "updated_at")
    search_fields = ("name",)
    fields = ("name", "description", "created_by", "created_at", "updated_at")
    readonly_fields = ("created_by", "created_at", "updated_at")
    change_form_template = "admin/nurturing/segment/change_form.html"

    @admin.display(description=gettext_lazy("conditions"))
    def summary(self, segment: Segment) -> str:
        return segments.describe_conditions(segment.conditions)

    def save_model(self, request: HttpRequest, obj: Segment, form: Any, change: bool) -> None:
        if not change:
            obj.created_by = request.user
        super().save_model(request, obj, form, change)

    def get_urls(self) -> list:
        preview = self.admin_site.admin_view(self.preview_view)
        return [path("preview/", preview, name="nurturing_segment_preview"), *super().get_urls()]

    def render_change_form(self, request: HttpRequest, context: dict, *args: Any, **kwargs: Any):
        form = context["adminform"].form
        obj = kwargs.get("obj")
        context.update(
            conditions_formset=form.conditions_formset,
            can_edit_conditions=self.has_change_permission(request, obj)
            if obj
            else self.has_add_permission(request),
            conditions_summary=segments.describe_conditions(obj.conditions) if obj else "",
            allowlist=allowlist_for_editor(),
        )
        return super().render_change_form(request, context, *args, **kwargs)

    def preview_view(self, request: HttpRequest) -> HttpResponse:
        """The count and a sample of the posted rows (or of a saved segment), as a fragment."""
        if request.method != "POST" or not self.has_view_permission(request):
            raise PermissionDenied
        context: dict[str, Any] = {"opts": self.model._meta}
        conditions = self._posted_conditions(request, context)
        if conditions is not None:
            base = Lead.objects.visible_to(request.user)
            context["preview"] = segments.count_and_sample(conditions, base=base)
            context["summary"] = segments.describe_conditions(conditions)
        return TemplateResponse(request, "admin/nurturing/segment/_preview.html", context)

    def _posted_conditions(self, request: HttpRequest, context: dict) -> list | None:
        if "conditions-TOTAL_FORMS" in request.POST:
            formset = ConditionFormSet(data=request.POST, prefix="conditions")
            if formset.is_valid():
                return formset.conditions()
            context.update(invalid=True, errors=formset_messages(formset))
            return None
        segment = Segment.objects.filter(pk=_int_or_none(request.POST.get("segment"))).first()
        if segment is None:
            context.update(invalid=True, errors=[_("Send the condition rows or a saved segment.")])
            return None
        return segment.conditions


def formset_messages(formset: forms.BaseFormSet) -> list[str]:
    """Every error of the rows as sentences ("Condition 2: …"), in order."""
    found = [str(error) for error in formset.non_form_errors()]
    for number, form in enumerate(formset.forms, start=1):
        for error in (message for errors in form.errors.values() for message in errors):
            found.append(_("Condition %(number)s: %(error)s") % {"number": number, "error": error})
    return found


def _int_or_none(text: Any) -> int | None:
    return int(text) if isinstance(text, str) and text.isdigit() else None


# --- tracks and steps ----------------------------------------------------------------------

TEMPLATE_HELP = gettext_lazy(
    "A Django template: {{ lead.last_name }} 様, {{ lead.company }}, {{ lead.title }} … "
    '{{ lead.last_name|default:"ご担当者" }} covers an empty name.'
)


PLACEHOLDER_HELP = gettext_lazy(
    "Subjects and bodies are templates: {{ lead.last_name }}, {{ lead.first_name }}, "
    "{{ lead.full_name }}, {{ lead.company }}, {{ lead.title }}, {{ lead.department }}, "
    "{{ lead.job_level }}, {{ lead.industry }}, {{ lead.region }}, {{ lead.owner_name }}. "
    "The body is plain text; the unsubscribe link is added when the email is sent."
)


class StepForm(forms.ModelForm):
    class Meta:
        model = Step
        fields = ("position", "delay_hours", "subject_ja", "body_ja", "subject_en", "body_en")
        widgets = {
            "body_ja": forms.Textarea(attrs={"rows": 8, "cols": 80}),
            "body_en": forms.Textarea(attrs={"rows": 8, "cols": 80}),
        }
        help_texts = {
            "delay_hours": gettext_lazy(
                "Hours after enrollment (first step) or after the previous step. "
                "A newsletter ignores it."
            ),
            "body_ja": TEMPLATE_HELP,
            "subject_en": gettext_lazy("Leave the English text empty to send Japanese to all."),
        }

    def _template(self, name: str) -> str:
        source = self.cleaned_data.get(name) or ""
        enrollment.check_mail_template(source)
        return source

    def clean_subject_ja(self) -> str:
        return self._template("subject_ja")

    def clean_body_ja(self) -> str:
        return self._template("body_ja")

    def clean_subject_en(self) -> str:
        return self._template("subject_en")

    def clean_body_en(self) -> str:
        return self._template("body_en")

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        if bool((data.get("subject_en") or "").strip()) != bool(
            (data.get("body_en") or "").strip()
        ):
            raise ValidationError(_("Write both the English subject and body, or neither."))
        return data


class StepFormSet(BaseInlineFormSet):
    """A step already sent keeps its send log: it cannot be deleted. A newsletter has one."""

    def clean(self) -> None:
        super().clean()
        for form in self.deleted_forms:
            sent = form.instance.pk and form.instance.sends.count()
            if sent:
                raise ValidationError(
                    _(
                        "Step %(position)s was already sent to %(count)s leads: it cannot be "
                        "deleted. Change its text, or pause the track."
                    )
                    % {"position": form.instance.position, "count": sent}
                )
        kept = [f for f in self.forms if f.has_changed() or f.instance.pk]
        kept = [f for f in kept if f not in self.deleted_forms]
        if self.instance.kind == TrackKind.NEWSLETTER and len(kept) > 1:
            raise ValidationError(_("A newsletter sends one email: keep exactly one step."))


class StepInline(admin.StackedInline):
    model = Step
    form = StepForm
    formset = StepFormSet
    extra = 1


class TrackAdminForm(forms.ModelForm):
    temperature = forms.ChoiceField(
        label=gettext_lazy("temperature"),
        required=False,
        choices=BLANK + list(Temperature.choices),
    )

    class Meta:
        model = Track
        fields = ("name", "kind", "enrollment_rule", "segment", "temperature", "scheduled_at")

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        rule, kind = data.get("enrollment_rule"), data.get("kind")
        if rule == EnrollmentRule.SEGMENT and not data.get("segment"):
            self.add_error("segment", _("Choose the segment whose leads enroll."))
        if rule == EnrollmentRule.TEMPERATURE and not data.get("temperature"):
            self.add_error("temperature", _("Choose the temperature whose leads enroll."))
        if kind == TrackKind.NEWSLETTER and rule not in enrollment.AUDIENCE_RULES:
            self.add_error(
                "enrollment_rule",
                _("A newsletter goes to a segment or to a temperature: choose one."),
            )
        if kind == TrackKind.STEP and data.get("scheduled_at"):
            self.add_error(
                "scheduled_at",
                _("Only newsletters have a send time; step mails send each step after its delay."),
            )
        if self.instance.pk and "kind" in self.changed_data and self.instance.enrollments.exists():
            self.add_error("kind", _("Leads are enrolled in this track: its kind cannot change."))
        return data


@admin.register(Track)
class TrackAdmin(admin.ModelAdmin):
    form = TrackAdminForm
    list_display = ("name", "kind", "status", "enrollment_rule", "segment", "scheduled_at")
    list_filter = ("status", "kind", "enrollment_rule")
    list_select_related = ("segment",)
    search_fields = ("name",)
    readonly_fields = ("status", "last_error", "created_by", "created_at", "updated_at")
    fieldsets = (
        (None, {"fields": ("name", "kind", "status", "last_error")}),
        (
            gettext_lazy("Who enrolls"),
            {"fields": ("enrollment_rule", "segment", "temperature", "scheduled_at")},
        ),
        (None, {"fields": ("created_by", "created_at", "updated_at")}),
    )
    inlines = (StepInline,)
    actions = ("activate_tracks", "pause_tracks")
    change_form_template = "admin/nurturing/track/change_form.html"

    def save_model(self, request: HttpRequest, obj: Track, form: Any, change: bool) -> None:
        if not change:
            obj.created_by = request.user
        super().save_model(request, obj, form, change)

    # --- actions and buttons ---

    @admin.action(description=gettext_lazy("Activate the selected tracks"), permissions=["change"])
    def activate_tracks(self, request: HttpRequest, queryset: QuerySet) -> None:
        for track in queryset:
            self._activate(request, track)

    @admin.action(description=gettext_lazy("Pause the selected tracks"), permissions=["change"])
    def pause_tracks(self, request: HttpRequest, queryset: QuerySet) -> None:
        paused = sum(enrollment.pause_track(track.pk) for track in queryset)
        message = ngettext("%(count)s track paused.", "%(count)s tracks paused.", paused)
        self.message_user(request, message % {"count": paused})

    def _activate(self, request: HttpRequest, track: Track) -> None:
        try:
            enrolled = enrollment.activate_track(track.pk)
        except enrollment.TrackNotReady as exc:
            message = _("“%(track)s” was not activated: %(problems)s")
            problems = " ".join(exc.problems)
            self.message_user(
                request, message % {"track": track, "problems": problems}, messages.ERROR
            )
            return
        if enrolled is None:
            message = _("“%(track)s” is active; its many leads enroll within a minute.")
        else:
            message = _("“%(track)s” is active; %(count)s leads enrolled now.")
        self.message_user(request, message % {"track": track, "count": enrolled})

    def get_urls(self) -> list:
        wrap = self.admin_site.admin_view
        own = [
            path("<int:pk>/activate/", wrap(self.activate_view), name="nurturing_track_activate"),
            path("<int:pk>/pause/", wrap(self.pause_view), name="nurturing_track_pause"),
            path(
                "<int:pk>/steps/<int:step_id>/preview/",
                wrap(self.step_preview_view),
                name="nurturing_track_step_preview",
            ),
            path(
                "<int:pk>/steps/<int:step_id>/test/",
                wrap(self.test_send_view),
                name="nurturing_track_step_test",
            ),
        ]
        return own + super().get_urls()

    def _track_for(self, request: HttpRequest, pk: int, *, change: bool) -> Track:
        track = get_object_or_404(Track, pk=pk)
        allowed = (
            self.has_change_permission(request, track)
            if change
            else self.has_view_permission(request, track)
        )
        if not allowed or (change and request.method != "POST"):
            raise PermissionDenied
        return track

    def _change_url(self, track: Track) -> str:
        return reverse("admin:nurturing_track_change", args=[track.pk])

    def activate_view(self, request: HttpRequest, pk: int) -> HttpResponse:
        track = self._track_for(request, pk, change=True)
        self._activate(request, track)
        return HttpResponseRedirect(self._change_url(track))

    def pause_view(self, request: HttpRequest, pk: int) -> HttpResponse:
        track = self._track_for(request, pk, change=True)
        if enrollment.pause_track(track.pk):
            self.message_user(
                request, _("The track is paused: nothing is sent until it is active.")
            )
        else:
            self.message_user(request, _("Only an active track can be paused."), messages.ERROR)
        return HttpResponseRedirect(self._change_url(track))

    def step_preview_view(self, request: HttpRequest, pk: int, step_id: int) -> HttpResponse:
        track = self._track_for(request, pk, change=False)
        step = get_object_or_404(Step, pk=step_id, track=track)
        language = _language(request.GET.get("language"))
        lead, lead_error = self._preview_lead(request, track, request.GET.get("lead"))
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "original": track,
            "step": step,
            "language": language,
            "lead": lead,
            "lead_error": lead_error,
            "lead_query": request.GET.get("lead", ""),
            "title": _("Preview of step %(position)s") % {"position": step.position},
            "can_send_test": self.has_change_permission(request, track),
        }
        try:
            context["subject"], context["body"] = enrollment.render_step(step, lead, language)
        except enrollment.TemplateRenderError as exc:
            context["render_error"] = str(exc)
        return TemplateResponse(request, "admin/nurturing/track/step_preview.html", context)

    def test_send_view(self, request: HttpRequest, pk: int, step_id: int) -> HttpResponse:
        track = self._track_for(request, pk, change=True)
        step = get_object_or_404(Step, pk=step_id, track=track)
        language = _language(request.POST.get("language"))
        lead, _error = self._preview_lead(request, track, request.POST.get("lead"))
        back = reverse("admin:nurturing_track_step_preview", args=[track.pk, step.pk])
        back += f"?language={language}" + (f"&lead={lead.pk}" if lead.pk else "")
        if not request.user.email:
            self.message_user(
                request,
                _("Your user has no email address: add one to your user, then send the test."),
                messages.ERROR,
            )
            return HttpResponseRedirect(back)
        self._send_test(request, step, lead=lead, language=language)
        return HttpResponseRedirect(back)

    def _send_test(self, request: HttpRequest, step: Step, *, lead: Lead, language: str) -> None:
        try:
            enrollment.send_test_email(step, lead=lead, language=language, to=request.user.email)
        except enrollment.TemplateRenderError as exc:
            self.message_user(request, str(exc), messages.ERROR)
        except OSError as exc:  # SMTP refused or unreachable (smtplib errors are OSErrors)
            self.message_user(
                request,
                _("The test email could not be sent: %(error)s") % {"error": exc},
                messages.ERROR,
            )
        else:
            self.message_user(
                request, _("A test email was sent to %(email)s.") % {"email": request.user.email}
            )

    def _preview_lead(self, request: HttpRequest, track: Track, wanted: Any) -> tuple[Lead, str]:
        """The lead asked for (id or email, among the leads the user sees), or a default."""
        wanted = (wanted or "").strip() if isinstance(wanted, str) else ""
        if not wanted:
            return enrollment.preview_lead(track), ""
        visible = Lead.objects.visible_to(request.user).select_related("account", "owner")
        field = "email" if "@" in wanted else "pk"
        if field == "pk" and not wanted.isdigit():
            lead = None
        else:
            lead = visible.filter(**{field: wanted.lower() if field == "email" else wanted}).first()
        if lead is None:
            message = _("No lead %(lead)s: previewing with another lead.") % {"lead": wanted[:100]}
            return enrollment.preview_lead(track), message
        return lead, ""

    def render_change_form(self, request: HttpRequest, context: dict, *args: Any, **kwargs: Any):
        obj = kwargs.get("obj")
        context["can_operate"] = bool(obj and self.has_change_permission(request, obj))
        context["placeholder_help"] = PLACEHOLDER_HELP
        if obj is not None:
            context.update(
                steps=list(obj.steps.order_by("position")),
                enrollment_counts=_enrollment_counts(obj),
                segment_summary=_segment_summary(obj),
                kpis=_track_kpis(obj.pk),
            )
        return super().render_change_form(request, context, *args, **kwargs)


def _language(value: Any) -> str:
    return value if value in enrollment.LANGUAGES else "ja"


def _enrollment_counts(track: Track) -> list[tuple[str, int]]:
    rows = track.enrollments.values("status").annotate(count=Count("pk")).order_by("status")
    labels = dict(Enrollment._meta.get_field("status").choices)
    return [(str(labels.get(row["status"], row["status"])), row["count"]) for row in rows]


def _segment_summary(track: Track) -> str:
    if track.enrollment_rule == EnrollmentRule.SEGMENT and track.segment_id:
        return segments.describe_conditions(track.segment.conditions)
    return ""


KPI_COLUMNS = (
    ("sent", None, gettext_lazy("sent")),
    ("delivered", None, gettext_lazy("delivered")),
    ("opened", "open_rate", gettext_lazy("opened")),
    ("clicked", "click_rate", gettext_lazy("clicked")),
    ("unsubscribed", "unsubscribe_rate", gettext_lazy("unsubscribed")),
    ("mql", "mql_rate", gettext_lazy("became MQL")),
    ("opportunity", "opportunity_rate", gettext_lazy("became opportunity")),
)


def _track_kpis(track_id: int) -> dict[str, Any] | None:
    """The sender's KPIs of the track (`nurturing.sending.track_kpis`) as table rows."""
    try:
        from nurturing.sending import track_kpis
    except ImportError:  # the sending side is not installed: no KPIs to show
        return None
    kpis = track_kpis(track_id)
    rows = [
        (_("Step %(position)s") % {"position": step["position"]}, _kpi_cells(step))
        for step in kpis.get("steps", [])
    ]
    rows.append((_("Whole track (leads count once)"), _kpi_cells(kpis.get("track", {}))))
    return {"columns": [label for _name, _rate, label in KPI_COLUMNS], "rows": rows}


def _kpi_cells(counts: dict[str, Any]) -> list[str]:
    cells = []
    for name, rate_name, _label in KPI_COLUMNS:
        rate = counts.get(rate_name) if rate_name else None
        value = counts.get(name, 0)
        cells.append(f"{value} ({rate * 100:.1f}%)" if rate is not None else str(value))
    return cells


# --- enrollments ---------------------------------------------------------------------------


@admin.register(Enrollment)
class EnrollmentAdmin(BigTableAdmin):
    """Read-only: enrollments are written by enrollment and sending, never by hand."""

    list_display = (
        "lead",
        "track",
        "status",
        "next_position",
        "next_send_at",
        "enrolled_at",
        "exited_at",
        "exit_reason",
    )
    list_filter = ("status", "track", "exit_reason")
    list_select_related = ("lead", "track")
    search_fields = ("=lead__email",)
    search_help_text = gettext_lazy("Exact lead email.")
    ordering = ("-id",)
    sortable_by = ()
    fields = list_display
    readonly_fields = list_display

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
