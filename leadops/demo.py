"""The demo workspace: a seeded, realistic Japanese B2B data set for `make run`.

Everything is generated from one seed, and every row has a natural key (account name,
lead email, event id), so a second load with the same sizes adds nothing. Emails live
under the reserved `example.*.jp` domains: no real mailbox ever gets demo mail.
"""

from __future__ import annotations

import hashlib
import math
import random
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractUser, Group
from django.db import connection, transaction
from django.db.models import Max, Model, OuterRef, Subquery
from django.utils import timezone
from faker import Faker

from leadops.models import Account, Activity, EventType, Lead, Stage
from leadops.roles import Role

DEFAULT_SEED = 20250401
DEFAULT_ACCOUNTS = 300
DEFAULT_LEADS = 3000
DEFAULT_DAYS = 30
# A fixed, documented password: the demo runs on loopback for a first look only.
DEMO_PASSWORD = "leadops-demo"  # noqa: S105 (published on purpose)
ADMIN_USERNAME = "admin"
DEMO_SALES_USERNAME = "demo-sales"
# username: (role, 姓, 名)
DEMO_USERS: dict[str, tuple[str, str, str]] = {
    "demo-marketer": (Role.MARKETER, "佐藤", "美咲"),
    "demo-is": (Role.INSIDE_SALES, "鈴木", "翔太"),
    "demo-is2": (Role.INSIDE_SALES, "伊藤", "さくら"),
    DEMO_SALES_USERNAME: (Role.SALES, "高橋", "健一"),
    "demo-sales2": (Role.SALES, "渡辺", "大輔"),
    "demo-manager": (Role.MANAGER, "田中", "由美"),
}
EVENT_SOURCE = "demo"
BATCH_SIZE = 2000
SITE = "https://www.leadops-demo.example"
TOKYO = ZoneInfo("Asia/Tokyo")

# industry: (weight, [(company-name word, its romaji for the domain)])
INDUSTRIES: dict[str, tuple[int, list[tuple[str, str]]]] = {
    "software": (20, [("ソフト", "soft"), ("システムズ", "systems"), ("テクノロジーズ", "tech")]),
    "it_services": (
        18,
        [("情報システム", "joho"), ("ITソリューションズ", "its"), ("データ", "data")],
    ),
    "manufacturing": (
        20,
        [("製作所", "ss"), ("電機", "denki"), ("工業", "kogyo"), ("精機", "seiki")],
    ),
    "finance": (8, [("証券", "shoken"), ("損害保険", "sonpo"), ("ファイナンス", "finance")]),
    "retail": (12, [("商事", "shoji"), ("物産", "bussan"), ("ストア", "store")]),
    "healthcare": (7, [("メディカル", "medical"), ("製薬", "pharma"), ("ヘルスケア", "hc")]),
    "education": (6, [("学園", "gakuen"), ("教育", "kyoiku"), ("スクール", "school")]),
    "public": (4, [("地域振興財団", "shinko"), ("産業振興センター", "center")]),
    "other": (5, [("建設", "kensetsu"), ("運輸", "unyu"), ("不動産", "fudosan")]),
}
DOMAIN_SUFFIX = {"education": "example.ac.jp", "public": "example.or.jp"}
NAME_PATTERNS = {"education": "学校法人{}", "public": "一般財団法人{}"}
EMPLOYEE_BUCKETS = [(5, 49), (50, 99), (100, 299), (300, 999), (1000, 4999), (5000, 30000)]
EMPLOYEE_WEIGHTS = [25, 18, 22, 17, 12, 6]

DEPARTMENTS = {"marketing": 28, "sales": 26, "management": 14, "it": 20, "other": 12}
DEPARTMENT_NAMES = {
    "marketing": ["マーケティング"],
    "sales": ["営業"],
    "management": ["経営企画"],
    "it": ["情報システム"],
    "other": ["総務", "人事", "経理"],
}
JOB_LEVELS = {"executive": 8, "director": 17, "manager": 27, "staff": 40, "other": 8}
TITLES = {
    "executive": ["代表取締役社長", "取締役", "常務取締役", "執行役員"],
    "director": ["{dept}部 部長", "{dept}本部 本部長", "{dept}部 部長代理"],
    "manager": ["{dept}部 課長", "{dept}部 マネージャー", "{dept}グループ リーダー"],
    "staff": ["{dept}部", "{dept}部 主任", "{dept}部 担当"],
    "other": ["顧問", "{dept}部 契約社員", ""],
}
SOURCES = {
    "展示会": 18,
    "ウェビナー": 16,
    "資料DL": 20,
    "Web広告": 14,
    "紹介": 8,
    "API": 8,
    "CSV import": 10,
    "Webフォーム": 6,
}
# The event a lead's source implies, recorded as its first behaviour.
FIRST_EVENT = {"ウェビナー": "webinar_attended", "資料DL": "document_download"}

EVENT_TYPES = {
    "page_view": 62,
    "email_open": 14,
    "email_click": 6,
    "document_download": 6,
    "webinar_attended": 3,
    "seminar_attended": 1,
    "form_submit": 1,
    "quote_request": 0.4,
    "trial_signup": 0.4,
    "unsubscribe": 0.5,
}
PAGES = {
    "/": 10,
    "/features": 14,
    "/pricing": 5,
    "/case/{case}": 15,
    "/blog/{post}": 36,
    "/integrations": 5,
    "/security": 5,
    "/company": 3,
}
CASES = ["manufacturing-dx", "saas-marketing", "bank-lead-nurturing", "retail-crm"]
POSTS = ["what-is-mql", "lead-scoring-basics", "bant-hearing", "nurturing-mail", "sla-design"]
DOCUMENTS = ["サービス紹介資料", "導入事例集", "料金表", "リードスコアリング入門ガイド"]
WEBINARS = ["MA活用ウェビナー", "インサイドセールス立ち上げ講座", "スコアリング設計入門"]
CAMPAIGNS = ["月刊メルマガ", "新機能のお知らせ", "導入事例特集", "セミナーのご案内"]
# (fewest, most) events a lead has: weight. Most leads are quiet, a few very active.
# Most leads do little; a few are very active (so a minority is hot, as in real lists).
ENGAGEMENT = {(0, 0): 40, (1, 2): 35, (3, 8): 18, (9, 25): 7}
# Local hour of day (Asia/Tokyo): office hours, a little evening, almost no night.
HOUR_WEIGHTS = [1, 0, 0, 0, 0, 1, 2, 4, 8, 14, 16, 15, 9, 14, 16, 15, 13, 10, 7, 5, 4, 3, 2, 1]


@dataclass
class DemoSummary:
    """What one load added (rows that already existed are not counted)."""

    users: int = 0
    accounts: int = 0
    leads: int = 0
    activities: int = 0


@dataclass
class _Plan:
    """Unsaved rows, linked by natural keys until the database hands out ids."""

    accounts: list[Account] = field(default_factory=list)
    leads: list[tuple[Lead, str]] = field(default_factory=list)  # (lead, account name)
    events: list[tuple[Activity, str]] = field(default_factory=list)  # (event, lead email)


@transaction.atomic
def load_demo_workspace(
    *,
    accounts: int = DEFAULT_ACCOUNTS,
    leads: int = DEFAULT_LEADS,
    days: int = DEFAULT_DAYS,
    seed: int = DEFAULT_SEED,
    now: datetime | None = None,
) -> DemoSummary:
    """Create the demo users, accounts, leads and behaviour events; skip what exists.

    Scores are left alone: the caller rescores every lead afterwards.
    """
    summary = DemoSummary(users=ensure_demo_users())
    owner = get_user_model().objects.get(username=DEMO_SALES_USERNAME)
    plan = _DemoGenerator(seed=seed, days=days, now=now or timezone.now()).plan(
        accounts=accounts, leads=leads
    )
    summary.accounts = _insert_accounts(plan)
    summary.leads = _insert_leads(plan, owner=owner)
    summary.activities = _insert_events(plan)
    _set_last_activity([lead.email for lead, _ in plan.leads])
    return summary


def ensure_demo_users(*, password: str = DEMO_PASSWORD) -> int:
    """One user per role plus the superuser `admin`; return how many were created.

    Existing users keep their password and profile: someone may have changed them.
    """
    created = sum(
        _ensure_role_user(username, role=role, last_name=last, first_name=first, password=password)
        for username, (role, last, first) in DEMO_USERS.items()
    )
    user_model = get_user_model()
    if not user_model.objects.filter(username=ADMIN_USERNAME).exists():
        user_model.objects.create_superuser(ADMIN_USERNAME, "admin@leadops-demo.example", password)
        created += 1
    return created


def rescore_all_leads() -> None:
    """Rescore every lead after a demo load (`load_demo` calls this and nothing else does)."""
    from scoring.services import rescore_leads

    rescore_leads(None)


def _ensure_role_user(
    username: str, *, role: str, last_name: str, first_name: str, password: str
) -> bool:
    user: AbstractUser
    user, created = get_user_model().objects.get_or_create(
        username=username,
        defaults={
            "last_name": last_name,
            "first_name": first_name,
            "email": f"{username}@leadops-demo.example",
            "is_staff": True,
        },
    )
    if created:
        user.set_password(password)
        user.save(update_fields=["password"])
    user.groups.add(Group.objects.get_or_create(name=role)[0])
    return created


def _insert_accounts(plan: _Plan) -> int:
    before = Account.objects.count()
    Account.objects.bulk_create(plan.accounts, batch_size=BATCH_SIZE, ignore_conflicts=True)
    return Account.objects.count() - before


def _insert_leads(plan: _Plan, *, owner: Model) -> int:
    names = [account.name for account in plan.accounts]
    account_ids = dict(Account.objects.filter(name__in=names).values_list("name", "id"))
    for lead, account_name in plan.leads:
        lead.account_id = account_ids[account_name]
        if lead.stage in (Stage.SAL, Stage.OPPORTUNITY):
            lead.owner = owner
    before = Lead.objects.count()
    rows = [lead for lead, _ in plan.leads]
    Lead.objects.bulk_create(rows, batch_size=BATCH_SIZE, ignore_conflicts=True)
    return Lead.objects.count() - before


def _insert_events(plan: _Plan) -> int:
    emails = [lead.email for lead, _ in plan.leads]
    lead_ids = dict(Lead.objects.filter(email__in=emails).values_list("email", "id"))
    for event, email in plan.events:
        event.lead_id = lead_ids[email]
    before = Activity.objects.count()
    rows = [event for event, _ in plan.events]
    Activity.objects.bulk_create(rows, batch_size=BATCH_SIZE, ignore_conflicts=True)
    return Activity.objects.count() - before


def _set_last_activity(emails: list[str]) -> None:
    latest = (
        Activity.objects.filter(lead=OuterRef("pk"))
        .order_by()
        .values("lead")
        .annotate(latest=Max("occurred_at"))
        .values("latest")
    )
    Lead.objects.filter(email__in=emails).update(last_activity_at=Subquery(latest))
    _spread_created_at(emails)


def _spread_created_at(emails: list[str]) -> None:
    # A lead came in before its first behaviour: up to 60 days earlier, stable per email,
    # so the "new leads this week" figure looks like a real list, not "all of them".
    with connection.cursor() as cursor:
        cursor.execute(
            """UPDATE leadops_lead l SET created_at = LEAST(l.created_at, COALESCE(
                   (SELECT min(a.occurred_at) FROM leadops_activity a WHERE a.lead_id = l.id),
                   l.created_at)) - make_interval(days => abs(hashtext(l.email)) %% 60)
               WHERE l.email = ANY(%s)""",
            [emails],
        )


def _weighted(rng: random.Random, weights: dict):
    return rng.choices(list(weights), weights=list(weights.values()))[0]


class _DemoGenerator:
    """Draws the whole data set from one seed; no database access."""

    def __init__(self, *, seed: int, days: int, now: datetime) -> None:
        self.rng = random.Random(seed)
        self.fake = Faker("ja_JP")
        self.fake.seed_instance(seed)
        self.days = max(days, 1)
        self.now = now
        self.out = _Plan()
        self.used_emails: set[str] = set()

    def plan(self, *, accounts: int, leads: int) -> _Plan:
        self._plan_accounts(accounts)
        weights = [self._account_weight(account) for account in self.out.accounts]
        for _ in range(leads):
            account = self.rng.choices(self.out.accounts, weights=weights)[0]
            self._plan_lead(account)
        return self.out

    # --- accounts ---------------------------------------------------------------------

    def _plan_accounts(self, count: int) -> None:
        names: set[str] = set()
        for _ in range(count * 50):
            if len(names) == count:
                break
            account = self._draw_account()
            if account.name not in names:
                names.add(account.name)
                self.out.accounts.append(account)
        if len(names) < count:
            raise ValueError(f"Cannot draw {count} distinct company names; ask for fewer.")

    def _draw_account(self) -> Account:
        industry = self.rng.choices(
            list(INDUSTRIES), weights=[weight for weight, _ in INDUSTRIES.values()]
        )[0]
        word, word_romaji = self.rng.choice(INDUSTRIES[industry][1])
        kanji, _, romaji = self.fake.last_name_pair()
        return Account(
            name=self._company_name(f"{kanji}{word}", industry),
            domain=f"{romaji.lower()}-{word_romaji}.{DOMAIN_SUFFIX.get(industry, 'example.co.jp')}",
            industry=industry,
            employee_count=self.rng.randint(
                *self.rng.choices(EMPLOYEE_BUCKETS, weights=EMPLOYEE_WEIGHTS)[0]
            ),
        )

    def _company_name(self, core: str, industry: str) -> str:
        if industry in NAME_PATTERNS:
            return NAME_PATTERNS[industry].format(core)
        return f"株式会社{core}" if self.rng.random() < 0.7 else f"{core}株式会社"

    def _account_weight(self, account: Account) -> float:
        # A few companies bring many leads, and big companies more than small ones.
        return self.rng.paretovariate(1.6) * (1 + math.log10(account.employee_count or 1))

    # --- leads ------------------------------------------------------------------------

    def _plan_lead(self, account: Account) -> None:
        last, _, last_romaji = self.fake.last_name_pair()
        first, _, first_romaji = self.fake.first_name_pair()
        department, job_level = _weighted(self.rng, DEPARTMENTS), _weighted(self.rng, JOB_LEVELS)
        source = _weighted(self.rng, SOURCES)
        lead = Lead(
            email=self._email(first_romaji.lower(), last_romaji.lower(), account.domain),
            last_name=last,
            first_name=first,
            title=self._title(job_level, department),
            job_level=job_level,
            department=department,
            industry=account.industry,
            employee_count=account.employee_count,
            phone=self.fake.phone_number(),
            region=self.fake.prefecture(),
            source=source,
            stage=self._stage(),
            consent=self.rng.random() < 0.85,
        )
        self.out.leads.append((lead, account.name))
        self._plan_events(lead)

    def _email(self, first: str, last: str, domain: str) -> str:
        local = self.rng.choice([f"{first}.{last}", f"{first[0]}.{last}", f"{last}.{first}", last])
        email, n = f"{local}@{domain}", 1
        while email in self.used_emails:
            n += 1
            email = f"{local}{n}@{domain}"
        self.used_emails.add(email)
        return email

    def _title(self, job_level: str, department: str) -> str:
        dept = self.rng.choice(DEPARTMENT_NAMES[department])
        return self.rng.choice(TITLES[job_level]).format(dept=dept)

    def _stage(self) -> str:
        # Accepted leads belong to the demo sales rep; a few were sent back to nurturing.
        draw = self.rng.random()
        if draw < 0.05:
            return Stage.SAL
        if draw < 0.08:
            return Stage.OPPORTUNITY
        return Stage.NURTURING if draw < 0.2 else Stage.NEW

    # --- behaviour events -------------------------------------------------------------

    def _plan_events(self, lead: Lead) -> None:
        low, high = _weighted(self.rng, ENGAGEMENT)
        times = sorted(self._event_time() for _ in range(self.rng.randint(low, high)))
        for n, occurred_at in enumerate(times):
            kind = FIRST_EVENT.get(lead.source) if n == 0 else None
            kind = kind or _weighted(self.rng, EVENT_TYPES)
            self._add_event(lead, n, kind, occurred_at)
            if kind == EventType.UNSUBSCRIBE:
                # An unsubscribed lead gets no more mail, and says so.
                lead.unsubscribed, lead.consent = True, False
                break

    def _event_time(self) -> datetime:
        day = (self.now.astimezone(TOKYO) - timedelta(days=self.rng.randrange(self.days))).date()
        hour = self.rng.choices(range(24), weights=HOUR_WEIGHTS)[0]
        moment = datetime(day.year, day.month, day.day, hour, tzinfo=TOKYO) + timedelta(
            seconds=self.rng.randrange(3600)
        )
        # Later today has not happened yet: the day before instead.
        return moment if moment < self.now else moment - timedelta(days=1)

    def _add_event(self, lead: Lead, n: int, kind: str, occurred_at: datetime) -> None:
        event_id = f"demo:{lead.email}:{n}"
        event = Activity(
            type=kind,
            occurred_at=occurred_at,
            properties=self._properties(kind),
            event_id=event_id,
            fingerprint=hashlib.sha256(event_id.encode()).hexdigest(),
            source=EVENT_SOURCE,
        )
        self.out.events.append((event, lead.email))

    def _properties(self, kind: str) -> dict[str, str]:
        rng = self.rng
        if kind == EventType.PAGE_VIEW:
            path = _weighted(rng, PAGES).format(case=rng.choice(CASES), post=rng.choice(POSTS))
            return {"url": f"{SITE}{path}"}
        if kind in (EventType.EMAIL_OPEN, EventType.EMAIL_CLICK, EventType.UNSUBSCRIBE):
            return {"campaign": rng.choice(CAMPAIGNS)}
        if kind == EventType.DOCUMENT_DOWNLOAD:
            return {"title": rng.choice(DOCUMENTS)}
        if kind in (EventType.WEBINAR_ATTENDED, EventType.SEMINAR_ATTENDED):
            return {"title": rng.choice(WEBINARS)}
        forms = {"form_submit": "/contact", "quote_request": "/quote", "trial_signup": "/trial"}
        return {"url": f"{SITE}{forms[kind]}"}
