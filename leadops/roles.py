"""The four roles (Django groups), what each may do, and the writes that manage users.

Groups and their model permissions follow `ROLE_PERMISSIONS`: the post_migrate hook
`sync_role_groups` (connected in `leadops.apps`) makes them match after every migrate.
Code asks the helpers below, not group names.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db import transaction
from django.utils.translation import gettext_lazy as _

if TYPE_CHECKING:
    from rest_framework.authtoken.models import Token


class Role:
    MARKETER = "marketer"
    INSIDE_SALES = "inside_sales"
    SALES = "sales"
    MANAGER = "manager"

    ALL = (MARKETER, INSIDE_SALES, SALES, MANAGER)


ROLE_LABELS = {
    Role.MARKETER: _("Marketer"),
    Role.INSIDE_SALES: _("Inside sales"),
    Role.SALES: _("Sales"),
    Role.MANAGER: _("Manager"),
}


def roles_of(user: AbstractBaseUser | AnonymousUser) -> set[str]:
    if not user.is_authenticated:
        return set()
    cached = getattr(user, "_leadops_roles", None)
    if cached is None:
        cached = set(user.groups.values_list("name", flat=True))
        user._leadops_roles = cached
    return cached


def has_role(user, *roles: str) -> bool:
    return bool(user.is_authenticated and (user.is_superuser or roles_of(user) & set(roles)))


def sees_only_own_leads(user) -> bool:
    """A sales rep sees only the leads they own; every other role sees all."""
    if not user.is_authenticated:
        return True
    if user.is_superuser:
        return False
    roles = roles_of(user)
    return Role.SALES in roles and not roles & {Role.MANAGER, Role.MARKETER, Role.INSIDE_SALES}


def can_write_leads(user) -> bool:
    """Marketers, IS, managers (and integrations' tokens issued to them) create leads/events."""
    return has_role(user, Role.MARKETER, Role.INSIDE_SALES, Role.MANAGER)


# Model permissions each role's group holds ("app_label.codename"). A codename ending in
# "*" is a prefix: "scoring.view_*" is every view permission of the scoring app, so a
# manager sees the models later apps add without this table knowing each one.
# Later apps add their own entries here; `sync_role_groups` runs after every migrate,
# so groups always match this table.
ROLE_PERMISSIONS: dict[str, list[str]] = {
    Role.MARKETER: [
        "leadops.view_lead",
        "leadops.add_lead",
        "leadops.change_lead",
        "leadops.view_account",
        "leadops.add_account",
        "leadops.change_account",
        "leadops.view_activity",
        # Marketers own the scoring models: drafts, rules, preview and activation.
        "scoring.view_*",
        "scoring.add_scoringmodel",
        "scoring.change_scoringmodel",
        "scoring.delete_scoringmodel",
        "scoring.add_attributerule",
        "scoring.change_attributerule",
        "scoring.delete_attributerule",
        "scoring.add_behaviorrule",
        "scoring.change_behaviorrule",
        "scoring.delete_behaviorrule",
        "scoring.add_triggerrule",
        "scoring.change_triggerrule",
        "scoring.delete_triggerrule",
        # Marketers read the hand-off side: why sales rejected what they rejected.
        "handoff.view_handoff",
        "handoff.view_stagetransition",
        # … and own nurturing: segments, tracks and their steps, website forms; sends
        # are read-only except re-queueing failed ones.
        "nurturing.view_*",
        "nurturing.add_segment",
        "nurturing.change_segment",
        "nurturing.delete_segment",
        "nurturing.add_track",
        "nurturing.change_track",
        "nurturing.delete_track",
        "nurturing.add_step",
        "nurturing.change_step",
        "nurturing.delete_step",
        "nurturing.add_webform",
        "nurturing.change_webform",
        "nurturing.delete_webform",
        "nurturing.change_emailsend",
    ],
    Role.INSIDE_SALES: [
        "leadops.view_lead",
        "leadops.change_lead",
        "leadops.view_account",
        "leadops.view_activity",
    ],
    # Which leads: only their own, by `Lead.objects.visible_to` (API, pages, admin).
    Role.SALES: ["leadops.view_lead", "leadops.view_account", "leadops.view_activity"],
    Role.MANAGER: [
        "leadops.view_*",
        "scoring.view_*",
        "handoff.view_*",
        "nurturing.view_*",
        "auth.view_user",
        "auth.view_group",
        # A manager reassigns leads and fixes company data.
        "leadops.change_lead",
        "leadops.change_account",
        # … runs the hand-off: settings, calendar, rep availability, rules, webhooks,
        # and retries failed notifications.
        "handoff.change_handoffpolicy",
        "handoff.add_companyholiday",
        "handoff.change_companyholiday",
        "handoff.delete_companyholiday",
        "handoff.add_repprofile",
        "handoff.change_repprofile",
        "handoff.add_assignmentrule",
        "handoff.change_assignmentrule",
        "handoff.delete_assignmentrule",
        "handoff.add_webhookendpoint",
        "handoff.change_webhookendpoint",
        "handoff.delete_webhookendpoint",
        "handoff.change_delivery",
    ],
}


def sync_role_groups(**kwargs) -> None:
    """post_migrate hook: create the four groups and give each exactly its permissions."""
    from django.contrib.auth.models import Group

    for role, names in ROLE_PERMISSIONS.items():
        group, _created = Group.objects.get_or_create(name=role)
        group.permissions.set([p for name in names for p in _permissions_named(name)])


def _permissions_named(name: str) -> list:
    from django.contrib.auth.models import Permission

    app_label, codename = name.split(".", 1)
    permissions = Permission.objects.filter(content_type__app_label=app_label)
    if codename.endswith("*"):
        return list(permissions.filter(codename__startswith=codename[:-1]))
    return list(permissions.filter(codename=codename))


# --- writes: users and their API access ------------------------------------------------


def _role_group(role: str):
    from django.contrib.auth.models import Group

    if role not in Role.ALL:
        raise ValueError(f"Unknown role {role!r}; valid roles: {', '.join(Role.ALL)}")
    # get_or_create: a database that has not run migrate since the groups were added.
    group, _created = Group.objects.get_or_create(name=role)
    return group


@transaction.atomic
def assign_role(user, *, role: str | None) -> None:
    """Make `role` the user's only role (None: no role); groups that are not roles stay."""
    from django.contrib.auth.models import Group

    group = _role_group(role) if role else None
    others = Group.objects.filter(name__in=Role.ALL).exclude(name=role or "")
    user.groups.remove(*others)
    if group is not None:
        user.groups.add(group)
    user._leadops_roles = None


@transaction.atomic
def create_user_with_role(
    username: str, *, role: str, password: str, email: str = ""
) -> AbstractBaseUser:
    """A staff user (so the admin opens for every role, limited by permissions) in `role`."""
    from django.contrib.auth import get_user_model

    user = get_user_model().objects.create_user(
        username=username, email=email, password=password, is_staff=True
    )
    assign_role(user, role=role)
    return user


@transaction.atomic
def update_user_role(
    user, *, role: str, password: str | None = None, email: str | None = None
) -> None:
    """Set an existing user's role (and password / email when given); makes them staff."""
    if password is not None:
        user.set_password(password)
    if email is not None:
        user.email = email
    user.is_staff = True
    user.save()
    assign_role(user, role=role)


@transaction.atomic
def issue_api_token(user, *, rotate: bool = False) -> tuple[Token, bool]:
    """(the user's DRF token, whether it is new): created if missing; `rotate` replaces it."""
    from rest_framework.authtoken.models import Token

    if rotate:
        Token.objects.filter(user=user).delete()
    return Token.objects.get_or_create(user=user)
