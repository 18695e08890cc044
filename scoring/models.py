"""Scoring models (versioned rule sets), their rules, the score ledger and per-lead state.

Exactly one model is active (a partial unique index holds us to it); only drafts are
edited, so an active or archived model is read-only and a change means a cloned draft.
A lead's score is a pure function of its fields, its events, the active model and the
clock; `LeadScoreState` keeps what the engine needs between events (see engine.py).
"""

from __future__ import annotations

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models
from django.utils.translation import gettext_lazy as _

from leadops.models import EventType
from scoring import validators


def temperature_for_score(score: int, *, warm: int, hot: int) -> str:
    """cold < warm ≤ warm < hot ≤ hot; shared by the model row and its compiled spec."""
    if score >= hot:
        return "hot"
    return "warm" if score >= warm else "cold"


def meets_mql_rule(thresholds, *, score: int, behavior: int, attribute: int) -> bool:
    """The MQL rule: total ≥ X, or behaviour ≥ Y and attribute ≥ Z (`thresholds` has
    mql_total, mql_behavior, mql_attribute: a ScoringModel or its spec)."""
    by_total = thresholds.mql_total is not None and score >= thresholds.mql_total
    by_pair = (
        thresholds.mql_behavior is not None
        and thresholds.mql_attribute is not None
        and behavior >= thresholds.mql_behavior
        and attribute >= thresholds.mql_attribute
    )
    return by_total or by_pair


class ModelStatus(models.TextChoices):
    DRAFT = "draft", _("Draft")
    ACTIVE = "active", _("Active")
    ARCHIVED = "archived", _("Archived")


class ScoringModelQuerySet(models.QuerySet):
    def active(self) -> ScoringModelQuerySet:
        return self.filter(status=ModelStatus.ACTIVE)

    def drafts(self) -> ScoringModelQuerySet:
        return self.filter(status=ModelStatus.DRAFT)


class ScoringModel(models.Model):
    name = models.CharField(_("name"), max_length=100)
    version = models.PositiveIntegerField(_("version"), unique=True, editable=False)
    status = models.CharField(
        _("status"),
        max_length=10,
        choices=ModelStatus.choices,
        default=ModelStatus.DRAFT,
        editable=False,
    )
    description = models.TextField(_("description"), blank=True)
    warm_threshold = models.IntegerField(_("warm from (total score)"), default=50)
    hot_threshold = models.IntegerField(_("hot from (total score)"), default=70)
    mql_total = models.IntegerField(
        _("MQL: total score at least"),
        null=True,
        blank=True,
        default=80,
        help_text=_("Leave empty to use only the behaviour-and-attribute condition."),
    )
    mql_behavior = models.IntegerField(
        _("MQL: or behaviour score at least"), null=True, blank=True, default=50
    )
    mql_attribute = models.IntegerField(
        _("MQL: and attribute score at least"), null=True, blank=True, default=30
    )
    decay_grace_days = models.PositiveIntegerField(
        _("decay starts after (days without activity)"), default=30
    )
    decay_half_life_days = models.PositiveIntegerField(
        _("behaviour score halves every (days)"), default=30
    )
    based_on = models.ForeignKey(
        "self",
        verbose_name=_("cloned from"),
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        editable=False,
        related_name="clones",
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        verbose_name=_("created by"),
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        editable=False,
        related_name="+",
    )
    created_at = models.DateTimeField(_("created at"), auto_now_add=True)
    activated_at = models.DateTimeField(_("activated at"), null=True, blank=True, editable=False)

    objects = ScoringModelQuerySet.as_manager()

    class Meta:
        verbose_name = _("scoring model")
        verbose_name_plural = _("scoring models")
        ordering = ["-version"]
        constraints = [
            models.UniqueConstraint(
                fields=["status"],
                condition=models.Q(status="active"),
                name="scoring_one_active_model",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.name} v{self.version} ({self.get_status_display()})"

    @property
    def is_editable(self) -> bool:
        return self.status == ModelStatus.DRAFT

    def clean(self) -> None:
        validators.validate_thresholds(
            warm=self.warm_threshold,
            hot=self.hot_threshold,
            mql_total=self.mql_total,
            mql_behavior=self.mql_behavior,
            mql_attribute=self.mql_attribute,
        )
        validators.validate_decay(
            grace_days=self.decay_grace_days, half_life_days=self.decay_half_life_days
        )

    def temperature_for(self, score: int) -> str:
        return temperature_for_score(score, warm=self.warm_threshold, hot=self.hot_threshold)

    def is_mql(self, *, score: int, behavior: int, attribute: int) -> bool:
        return meets_mql_rule(self, score=score, behavior=behavior, attribute=attribute)

    def rule_count(self) -> int:
        return self.attribute_rules.count() + self.behavior_rules.count()


class _RuleBase(models.Model):
    """Common to every rule: it belongs to one model and is editable only in a draft."""

    label = models.CharField(_("label"), max_length=100)
    position = models.PositiveIntegerField(_("position"), default=0)

    class Meta:
        abstract = True
        ordering = ["position", "id"]

    def __str__(self) -> str:
        return self.label

    def clean_model_is_draft(self) -> None:
        model = getattr(self, "model", None)
        if model is not None and model.pk and not model.is_editable:
            raise ValidationError(validators.read_only_message(model))


class AttributeRule(_RuleBase):
    """Points for who the lead is: a lead field, an operator and a value."""

    model = models.ForeignKey(
        ScoringModel, on_delete=models.CASCADE, related_name="attribute_rules"
    )
    field = models.CharField(_("lead field"), max_length=30, choices=validators.FIELD_CHOICES)
    operator = models.CharField(_("operator"), max_length=20, choices=validators.OPERATOR_CHOICES)
    value = models.JSONField(
        _("value"),
        help_text=_(
            'JSON: "software" for eq, ["software", "it_services"] for in, 100 for gte/lte, '
            "[50, 99] for between, a list of domains for email_domain_in."
        ),
    )
    points = models.IntegerField(_("points"))

    class Meta(_RuleBase.Meta):
        verbose_name = _("attribute rule")
        verbose_name_plural = _("attribute rules")

    def clean(self) -> None:
        self.clean_model_is_draft()
        validators.validate_points(self.points)
        self.value = validators.validate_attribute_rule(self.field, self.operator, self.value)


class BehaviorRule(_RuleBase):
    """Points for what the lead does: an event type, property conditions and caps."""

    model = models.ForeignKey(ScoringModel, on_delete=models.CASCADE, related_name="behavior_rules")
    event_type = models.CharField(_("event type"), max_length=30, choices=EventType.choices)
    conditions = models.JSONField(
        _("property conditions"),
        default=list,
        blank=True,
        help_text=_(
            'JSON list, all must hold: [{"key": "url", "op": "contains", "value": "/pricing"}]. '
            "op is equals, contains, starts_with or in (value: a list of texts)."
        ),
    )
    points = models.IntegerField(_("points"), help_text=_("Negative points are allowed."))
    cap_per_lead = models.PositiveIntegerField(_("at most N times per lead"), null=True, blank=True)
    cap_per_window = models.PositiveIntegerField(
        _("at most N times per window"), null=True, blank=True
    )
    window_days = models.PositiveIntegerField(_("window (days)"), null=True, blank=True)
    daily_nth = models.PositiveIntegerField(
        _("only the Nth and later event of a calendar day, once per day"),
        null=True,
        blank=True,
        help_text=_("E.g. 3: the third page view of a day scores, once that day."),
    )

    class Meta(_RuleBase.Meta):
        verbose_name = _("behaviour rule")
        verbose_name_plural = _("behaviour rules")

    def clean(self) -> None:
        self.clean_model_is_draft()
        validators.validate_points(self.points)
        self.conditions = validators.validate_conditions(self.conditions)
        validators.validate_caps(
            cap_per_lead=self.cap_per_lead,
            cap_per_window=self.cap_per_window,
            window_days=self.window_days,
            daily_nth=self.daily_nth,
        )


class TriggerRule(_RuleBase):
    """A behaviour that hands the lead to IS at once, whatever its score.

    Fires on an event matching the type and conditions when the lead has at least
    `min_count` such events within `within_days` (up to and including this one).
    """

    model = models.ForeignKey(ScoringModel, on_delete=models.CASCADE, related_name="trigger_rules")
    event_type = models.CharField(_("event type"), max_length=30, choices=EventType.choices)
    conditions = models.JSONField(_("property conditions"), default=list, blank=True)
    min_count = models.PositiveIntegerField(_("number of such events"), default=1)
    within_days = models.PositiveIntegerField(_("within (days)"), null=True, blank=True)

    class Meta(_RuleBase.Meta):
        verbose_name = _("hand-off trigger")
        verbose_name_plural = _("hand-off triggers")

    def clean(self) -> None:
        self.clean_model_is_draft()
        self.conditions = validators.validate_conditions(self.conditions)
        validators.validate_trigger_count(min_count=self.min_count, within_days=self.within_days)


class ChangeReason(models.TextChoices):
    EVENT = "event", _("event")
    ATTRIBUTES = "attributes", _("lead data changed")
    DECAY = "decay", _("decay")
    RECALCULATION = "recalculation", _("recalculation")
    ACTIVATION = "activation", _("model activation")
    TRIGGER = "trigger", _("hand-off trigger")
    RESET = "reset", _("behaviour score reset")


class ScoreChangeQuerySet(models.QuerySet):
    def for_lead(self, lead_id: int) -> ScoreChangeQuerySet:
        return self.filter(lead_id=lead_id).order_by("-created_at", "-id")


class ScoreChange(models.Model):
    """The ledger: every change of a lead's score, with its rule and event.

    The points of a lead's rows add up to its score (trigger rows carry 0 points).
    """

    # Written set-based by the thousand: only the indexes reads need, and no database
    # constraint on the rule and event (the ORM still nulls them when one is deleted).
    lead = models.ForeignKey(
        "leadops.Lead", on_delete=models.CASCADE, related_name="score_changes", db_index=False
    )
    rule = models.ForeignKey(
        BehaviorRule,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        db_index=False,
        db_constraint=False,
    )
    rule_label = models.CharField(_("rule"), max_length=100, blank=True)
    activity = models.ForeignKey(
        "leadops.Activity",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        db_index=False,
        db_constraint=False,
    )
    points = models.IntegerField(_("points"))
    model_version = models.PositiveIntegerField(_("model version"))
    reason = models.CharField(_("reason"), max_length=20, choices=ChangeReason.choices)
    created_at = models.DateTimeField(_("time"))

    objects = ScoreChangeQuerySet.as_manager()

    class Meta:
        verbose_name = _("score change")
        verbose_name_plural = _("score changes")
        indexes = [
            # Covering: a lead's history and the dashboard's "rules behind the answered
            # leads" read the ledger by lead without visiting the table's rows.
            models.Index(
                fields=["lead", "-created_at"],
                include=["reason", "points", "rule_label"],
                name="scorechange_lead_history",
            ),
            models.Index(
                fields=["activity"],
                name="scorechange_activity",
                condition=models.Q(activity__isnull=False),
            ),
        ]

    def __str__(self) -> str:
        return f"{self.points:+d} {self.describe()}"

    def describe(self) -> str:
        """Why: the rule's label, or the reason (with the model version for activations)."""
        if self.reason == ChangeReason.ACTIVATION:
            return _("activation of model v%(version)s") % {"version": self.model_version}
        return self.rule_label or str(self.get_reason_display())


class LeadScoreState(models.Model):
    """What the engine remembers about a lead between rescores (one row per lead).

    `behavior_at_last_activity` is the behaviour score, undecayed, as it stood at the
    lead's last activity: the current behaviour score is it × 0.5^(quiet time past the
    grace period / half-life), which the daily decay pass applies without reading events.
    `breakdown` is {"a": [attribute rule ids], "b": [[behaviour rule id, count, points]]}.
    """

    lead = models.OneToOneField(
        "leadops.Lead", primary_key=True, on_delete=models.CASCADE, related_name="score_state"
    )
    model_version = models.PositiveIntegerField()
    behavior_at_last_activity = models.FloatField(default=0.0)
    last_activity_at = models.DateTimeField(null=True, blank=True)
    breakdown = models.JSONField(default=dict)
    # Events up to this time no longer count (a lead sales sent back "earns its way back").
    behavior_reset_at = models.DateTimeField(null=True, blank=True)
    # When the rescore that last changed this row began: events received well before it
    # were seen by it, so the next rescore looks only newer ones up in the ledger.
    computed_at = models.DateTimeField()

    class Meta:
        verbose_name = _("lead score state")
        verbose_name_plural = _("lead score states")
        indexes = [
            models.Index(
                fields=["behavior_reset_at"],
                name="scorestate_reset",
                condition=models.Q(behavior_reset_at__isnull=False),
            ),
        ]

    def __str__(self) -> str:
        return f"lead {self.lead_id} (v{self.model_version})"


class JobStatus(models.TextChoices):
    # Running from the request on (queued or rescoring): one unfinished job at a time.
    RUNNING = "running", _("Running")
    DONE = "done", _("Done")
    FAILED = "failed", _("Failed")


class ActivationJobQuerySet(models.QuerySet):
    def unfinished(self) -> ActivationJobQuerySet:
        return self.filter(status=JobStatus.RUNNING)


class ActivationJob(models.Model):
    """One activation of a model: who, when, progress of the rescore-all, what changed."""

    model = models.ForeignKey(ScoringModel, on_delete=models.PROTECT, related_name="activations")
    previous_model = models.ForeignKey(
        ScoringModel, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    status = models.CharField(
        _("status"), max_length=10, choices=JobStatus.choices, default=JobStatus.RUNNING
    )
    total = models.PositiveIntegerField(_("leads to rescore"), default=0)
    done = models.PositiveIntegerField(_("leads rescored"), default=0)
    # Highest lead id rescored so far: a retried job resumes after it.
    cursor = models.BigIntegerField(default=0)
    summary = models.JSONField(_("what changed"), default=dict, blank=True)
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(_("requested at"), auto_now_add=True)
    started_at = models.DateTimeField(_("started at"), null=True, blank=True)
    finished_at = models.DateTimeField(_("finished at"), null=True, blank=True)

    objects = ActivationJobQuerySet.as_manager()

    class Meta:
        verbose_name = _("activation")
        verbose_name_plural = _("activations")
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["status"],
                condition=models.Q(status="running"),
                name="scoring_one_unfinished_activation",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.model} ({self.get_status_display()})"

    @property
    def progress_percent(self) -> int:
        if not self.total:
            return 100 if self.status == JobStatus.DONE else 0
        return min(100, self.done * 100 // self.total)
