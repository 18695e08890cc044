"""The lead core: accounts (companies), leads and their behaviour events."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models.functions import Lower
from django.utils.translation import gettext_lazy as _


class JobLevel(models.TextChoices):
    EXECUTIVE = "executive", _("Executive / board (経営層・役員)")
    DIRECTOR = "director", _("Director (部長・事業部長)")
    MANAGER = "manager", _("Manager (課長・マネージャー)")
    STAFF = "staff", _("Staff (一般担当者)")
    OTHER = "other", _("Other")


class Department(models.TextChoices):
    MARKETING = "marketing", _("Marketing")
    SALES = "sales", _("Sales")
    MANAGEMENT = "management", _("Corporate planning")
    IT = "it", _("IT")
    OTHER = "other", _("Other")


class Industry(models.TextChoices):
    SOFTWARE = "software", _("Software")
    IT_SERVICES = "it_services", _("IT services")
    MANUFACTURING = "manufacturing", _("Manufacturing")
    FINANCE = "finance", _("Finance")
    RETAIL = "retail", _("Retail")
    HEALTHCARE = "healthcare", _("Healthcare")
    EDUCATION = "education", _("Education")
    PUBLIC = "public", _("Public sector")
    OTHER = "other", _("Other")


class Stage(models.TextChoices):
    NEW = "new", _("New")
    NURTURING = "nurturing", _("Nurturing")
    MQL = "mql", _("MQL")
    SQL = "sql", _("SQL")
    SAL = "sal", _("SAL")
    OPPORTUNITY = "opportunity", _("Opportunity")
    WON = "won", _("Won")
    LOST = "lost", _("Lost")
    DISQUALIFIED = "disqualified", _("Disqualified")


class Temperature(models.TextChoices):
    COLD = "cold", _("Cold")
    WARM = "warm", _("Warm")
    HOT = "hot", _("Hot")


class EventType(models.TextChoices):
    FORM_SUBMIT = "form_submit", _("Form submit")
    PAGE_VIEW = "page_view", _("Page view")
    WEBINAR_ATTENDED = "webinar_attended", _("Webinar attended")
    SEMINAR_ATTENDED = "seminar_attended", _("Seminar attended")
    DOCUMENT_DOWNLOAD = "document_download", _("Document download")
    EMAIL_OPEN = "email_open", _("Email open")
    EMAIL_CLICK = "email_click", _("Email click")
    TRIAL_SIGNUP = "trial_signup", _("Trial signup")
    QUOTE_REQUEST = "quote_request", _("Quote request")
    UNSUBSCRIBE = "unsubscribe", _("Unsubscribe")


# Sources are free text (a trade show has its own name), these are the usual ones.
COMMON_SOURCES = [
    "展示会",
    "ウェビナー",
    "資料DL",
    "Web広告",
    "紹介",
    "API",
    "CSV import",
    "Webフォーム",
]


class Account(models.Model):
    """A company. Leads from the same company share one account."""

    name = models.CharField(_("name"), max_length=200, unique=True)
    domain = models.CharField(_("domain"), max_length=200, blank=True)
    industry = models.CharField(_("industry"), max_length=20, choices=Industry.choices, blank=True)
    employee_count = models.PositiveIntegerField(_("employee count"), null=True, blank=True)
    created_at = models.DateTimeField(_("created at"), auto_now_add=True)

    class Meta:
        verbose_name = _("account")
        verbose_name_plural = _("accounts")
        ordering = ["name"]
        indexes = [models.Index(fields=["domain"])]

    def __str__(self) -> str:
        return self.name


class LeadQuerySet(models.QuerySet):
    def visible_to(self, user) -> LeadQuerySet:
        """Leads the user may see: a sales rep only the leads they own."""
        from leadops.roles import sees_only_own_leads

        if sees_only_own_leads(user):
            return self.filter(owner=user)
        return self


class Lead(models.Model):
    # Emails are stored lower-cased (the check constraint holds us to it), so a plain
    # unique index makes them unique case-insensitively and `email=` lookups use it.
    email = models.EmailField(_("email"), max_length=254, unique=True)
    first_name = models.CharField(_("first name"), max_length=100, blank=True)
    last_name = models.CharField(_("last name"), max_length=100, blank=True)
    # Foreign keys below without their own index: the Meta indexes cover them (every index
    # is rewritten when a rescore moves the scores or last_activity_at, so duplicates
    # cost scoring speed).
    account = models.ForeignKey(
        Account,
        verbose_name=_("company"),
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="leads",
        db_index=False,
    )
    title = models.CharField(_("title"), max_length=200, blank=True)
    job_level = models.CharField(
        _("job level"), max_length=20, choices=JobLevel.choices, blank=True
    )
    department = models.CharField(
        _("department"), max_length=20, choices=Department.choices, blank=True
    )
    industry = models.CharField(_("industry"), max_length=20, choices=Industry.choices, blank=True)
    employee_count = models.PositiveIntegerField(_("employee count"), null=True, blank=True)
    phone = models.CharField(_("phone"), max_length=50, blank=True)
    # Prefecture or sales region as the team writes it (東京都, 関西 …): assignment rules match it.
    region = models.CharField(_("region"), max_length=50, blank=True)
    source = models.CharField(_("source"), max_length=100, blank=True)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        verbose_name=_("owner"),
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="owned_leads",
        db_index=False,
    )
    stage = models.CharField(_("stage"), max_length=20, choices=Stage.choices, default=Stage.NEW)
    attribute_score = models.IntegerField(_("attribute score"), default=0)
    behavior_score = models.IntegerField(_("behavior score"), default=0)
    score = models.IntegerField(_("score"), default=0)
    temperature = models.CharField(
        _("temperature"), max_length=10, choices=Temperature.choices, default=Temperature.COLD
    )
    last_activity_at = models.DateTimeField(_("last activity"), null=True, blank=True)
    consent = models.BooleanField(_("consent to contact"), default=False)
    unsubscribed = models.BooleanField(_("unsubscribed"), default=False)
    created_at = models.DateTimeField(_("created at"), auto_now_add=True)
    updated_at = models.DateTimeField(_("updated at"), auto_now=True)

    objects = LeadQuerySet.as_manager()

    class Meta:
        verbose_name = _("lead")
        verbose_name_plural = _("leads")
        constraints = [
            models.CheckConstraint(
                condition=models.Q(email=Lower("email")), name="lead_email_lowercase"
            ),
        ]
        indexes = [
            models.Index(fields=["stage", "-score"], name="lead_stage_score"),
            models.Index(fields=["owner", "-id"], name="lead_owner_id"),
            # The dashboard: leads created in a period, by source, without the table.
            models.Index(fields=["created_at"], include=["source"], name="lead_created_source"),
            models.Index(fields=["temperature", "-id"], name="lead_temperature_id"),
            models.Index(fields=["-last_activity_at"], name="lead_last_activity"),
            models.Index(fields=["account"], name="lead_account"),
        ]

    def __str__(self) -> str:
        name = f"{self.last_name} {self.first_name}".strip()
        return f"{name} <{self.email}>" if name else self.email

    @property
    def company(self) -> str:
        return self.account.name if self.account_id else ""


class Activity(models.Model):
    """One behaviour event. `event_id` is the sender's idempotency key."""

    # Indexed by activity_lead_timeline (lead first); event_id's uniqueness is a constraint
    # rather than unique=True, which would add a second (LIKE-pattern) index. The largest
    # table takes the most inserts: every index less is faster ingest.
    lead = models.ForeignKey(
        Lead,
        verbose_name=_("lead"),
        on_delete=models.CASCADE,
        related_name="activities",
        db_index=False,
    )
    type = models.CharField(_("type"), max_length=30, choices=EventType.choices)
    occurred_at = models.DateTimeField(_("occurred at"))
    properties = models.JSONField(_("properties"), default=dict, blank=True)
    event_id = models.CharField(_("event id"), max_length=200)
    # sha256 of the canonical body: a resent event with the same id and the same body is
    # a duplicate, one with a different body is an error the sender must hear about.
    fingerprint = models.CharField(max_length=64)
    source = models.CharField(_("source"), max_length=100, blank=True)
    received_at = models.DateTimeField(_("received at"), auto_now_add=True)

    class Meta:
        verbose_name = _("activity")
        verbose_name_plural = _("activities")
        constraints = [
            models.UniqueConstraint(fields=["event_id"], name="activity_event_id_unique"),
        ]
        indexes = [
            models.Index(fields=["lead", "-occurred_at"], name="activity_lead_timeline"),
        ]

    def __str__(self) -> str:
        return f"{self.get_type_display()} @ {self.occurred_at:%Y-%m-%d %H:%M}"
