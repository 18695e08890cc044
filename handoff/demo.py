"""A working day's history for the demo's hand-offs, played through the real services.

After the demo's first scoring, its MQLs sit in the IS queue all opened "now". This
spreads their opening times over the last working days (so the queue shows warnings and
breaches) and has the demo IS reps and sales reps work some of them: claims, contact
attempts, SQLs waiting in the sales inbox, accepted and rejected ones. It runs once:
a workspace whose queue has been worked already is left alone.
"""

from __future__ import annotations

import random
from datetime import datetime, timedelta

from django.contrib.auth import get_user_model
from django.db import transaction
from django.utils import timezone

from handoff.models import ContactAttempt, Handoff, HandoffKind, HandoffStatus
from handoff.services import (
    accept_sql,
    calendar_for,
    claim_handoff,
    get_policy,
    log_contact_attempt,
    qualify_lead,
    reject_sql,
    sla_clock,
)

IS_USERNAMES = ("demo-is", "demo-is2")
SALES_USERNAMES = ("demo-sales", "demo-sales2")
NOTES = ["担当者不在、折り返し依頼", "資料送付済み、来週再架電", "課題ヒアリング完了", ""]
REJECT_COMMENTS = {
    "timing": "来期予算で再検討とのこと。3か月後に再アプローチを。",
    "not_decision_maker": "決裁者は情報システム部長。紹介を依頼中。",
    "wrong_fit": "従業員20名、要件が小規模向け。",
}


def play_demo_handoffs(*, seed: int, now: datetime | None = None) -> int:
    """Backdate and work the demo's first-contact hand-offs; return how many were worked."""
    if ContactAttempt.objects.exists() or Handoff.objects.filter(kind=HandoffKind.SALES).exists():
        return 0
    rng = random.Random(seed)
    now = now or timezone.now()
    users = {
        u.username: u
        for u in get_user_model().objects.filter(username__in=IS_USERNAMES + SALES_USERNAMES)
    }
    is_reps = [users[name] for name in IS_USERNAMES if name in users]
    sales_reps = [users[name] for name in SALES_USERNAMES if name in users]
    if not is_reps or not sales_reps:
        return 0
    handoffs = list(Handoff.objects.for_inside_sales().not_done().order_by("id"))
    _backdate(handoffs, rng=rng, now=now)
    worked = 0
    for handoff in handoffs:
        draw = rng.random()
        if draw < 0.45:
            continue  # still waiting for first contact
        worked += _work(handoff, draw, rng=rng, is_reps=is_reps, sales_reps=sales_reps)
    return worked


def _backdate(handoffs: list[Handoff], *, rng: random.Random, now: datetime) -> None:
    policy = get_policy()
    calendar = calendar_for(policy)
    for handoff in handoffs:
        opened = now - timedelta(hours=rng.choice([1, 3, 8, 20, 30, 50, 75, 100]))
        clock = sla_clock(
            opened, hours=policy.first_contact_sla_hours, policy=policy, calendar=calendar
        )
        Handoff.objects.filter(pk=handoff.pk).update(
            opened_at=opened, due_at=clock.due_at, warn_at=clock.warn_at
        )


@transaction.atomic
def _work(
    handoff: Handoff, draw: float, *, rng: random.Random, is_reps: list, sales_reps: list
) -> int:
    rep = next((r for r in is_reps if r.pk == handoff.assignee_id), is_reps[0])
    if handoff.status == HandoffStatus.OPEN and handoff.assignee_id in (None, rep.pk):
        claim_handoff(handoff.pk, actor=rep)
    if draw < 0.6:
        return 1  # claimed, not yet contacted
    log_contact_attempt(
        handoff.pk,
        actor=rep,
        channel=rng.choice(["call", "call", "email"]),
        outcome=rng.choice(["no_answer", "reached", "left_message"]),
        note=rng.choice(NOTES),
    )
    if draw < 0.8:
        return 1
    sales_rep = rng.choice(sales_reps)
    bant = {
        "budget": "年間300万円程度",
        "authority": "部長決裁",
        "need": "リード管理の一元化",
        "timeline": "半年以内",
    }
    qualify_lead(handoff.pk, actor=rep, sales_rep=sales_rep, bant=bant)
    if draw < 0.9:
        return 1  # waiting in the sales inbox
    if draw < 0.96:
        accept_sql(handoff.lead_id, actor=sales_rep)
    else:
        reason = rng.choice(sorted(REJECT_COMMENTS))
        reject_sql(handoff.lead_id, actor=sales_rep, reason=reason, comment=REJECT_COMMENTS[reason])
    return 1
