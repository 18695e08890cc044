"""Admin of the send log: every nurture mail, read-only, with its tracked links.

Nothing here edits a send: the log is written by `nurturing.sending` only. The one
action, re-queueing failed sends (after the template or the address was fixed), calls
the service; a sent mail is never sent again.
"""

from __future__ import annotations

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy, ngettext

from leadops.admin import BigTableAdmin
from nurturing.models import EmailSend, TrackedLink
from nurturing.sending import requeue_failed_sends

SEND_FIELDS = (
    "lead",
    "track",
    "step",
    "status",
    "queued_at",
    "sent_at",
    "attempts",
    "error",
    "first_opened_at",
    "first_clicked_at",
    "unsubscribed_at",
)


class TrackedLinkInline(admin.TabularInline):
    model = TrackedLink
    fields = ("position", "url")
    readonly_fields = fields
    extra = 0
    can_delete = False
    ordering = ("position",)

    def has_add_permission(self, request: HttpRequest, obj=None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj=None) -> bool:
        return False


@admin.register(EmailSend)
class EmailSendAdmin(BigTableAdmin):
    list_display = (
        "lead",
        "track",
        "step_position",
        "status",
        "queued_at",
        "sent_at",
        "attempts",
        "first_opened_at",
        "first_clicked_at",
        "unsubscribed_at",
    )
    list_filter = ("status", "track")
    list_select_related = ("lead", "track", "step")
    search_fields = ("lead__email",)
    fields = SEND_FIELDS
    readonly_fields = SEND_FIELDS
    ordering = ("-id",)
    inlines = (TrackedLinkInline,)
    actions = ("requeue_failed",)

    @admin.display(description=gettext_lazy("step"), ordering="step__position")
    def step_position(self, send: EmailSend) -> str:
        return f"#{send.step.position}"

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj=None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj=None) -> bool:
        # The list's action may change sends (with the permission); a send's page never
        # does: it is a view of the log.
        return obj is None and super().has_change_permission(request)

    @admin.action(
        description=gettext_lazy("Queue the selected failed sends again"),
        permissions=["change"],
    )
    def requeue_failed(self, request: HttpRequest, queryset: QuerySet[EmailSend]) -> None:
        count = requeue_failed_sends(queryset.values_list("pk", flat=True))
        if count:
            message = ngettext(
                "%(count)d failed send was queued again.",
                "%(count)d failed sends were queued again.",
                count,
            )
            self.message_user(request, message % {"count": count}, messages.SUCCESS)
        else:
            self.message_user(
                request,
                _("None of the selected sends had failed: only failed sends can be queued again."),
                messages.WARNING,
            )
