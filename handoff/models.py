"""Stages of a lead's life and their transitions (the hand-off issue adds hand-offs, SLAs)."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils.translation import gettext_lazy as _

from leadops.models import Stage


class StageTransition(models.Model):
    """One move of a lead from a stage to another: who, why, with what score, when."""

    lead = models.ForeignKey(
        "leadops.Lead",
        verbose_name=_("lead"),
        on_delete=models.CASCADE,
        related_name="stage_transitions",
    )
    from_stage = models.CharField(_("from"), max_length=20, choices=Stage.choices)
    to_stage = models.CharField(_("to"), max_length=20, choices=Stage.choices)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        verbose_name=_("by"),
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    reason = models.TextField(_("reason"), blank=True)
    score_snapshot = models.IntegerField(_("score at the time"))
    created_at = models.DateTimeField(_("time"), auto_now_add=True)

    class Meta:
        verbose_name = _("stage transition")
        verbose_name_plural = _("stage transitions")
        indexes = [
            models.Index(fields=["lead", "-created_at"], name="transition_lead_time"),
        ]

    def __str__(self) -> str:
        return f"{self.lead_id}: {self.from_stage} → {self.to_stage}"
