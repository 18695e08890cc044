"""The four roles (Django groups) and what each may do.

Groups and their model permissions are created by a data migration
(`leadops/migrations/0002_roles.py`); code asks these helpers, not group names.
"""

from __future__ import annotations

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser


class Role:
    MARKETER = "marketer"
    INSIDE_SALES = "inside_sales"
    SALES = "sales"
    MANAGER = "manager"

    ALL = (MARKETER, INSIDE_SALES, SALES, MANAGER)


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


# Model permissions each role's group holds ("app_label.codename"). Later apps add theirs
# here; `sync_role_groups` runs after every migrate, so groups always match this table.
ROLE_PERMISSIONS: dict[str, list[str]] = {
    Role.MARKETER: [
        "leadops.view_lead",
        "leadops.add_lead",
        "leadops.change_lead",
        "leadops.view_account",
        "leadops.add_account",
        "leadops.change_account",
        "leadops.view_activity",
    ],
    Role.INSIDE_SALES: [
        "leadops.view_lead",
        "leadops.change_lead",
        "leadops.view_account",
        "leadops.view_activity",
    ],
    Role.SALES: ["leadops.view_lead", "leadops.view_account", "leadops.view_activity"],
    Role.MANAGER: [
        "leadops.view_lead",
        "leadops.change_lead",
        "leadops.view_account",
        "leadops.change_account",
        "leadops.view_activity",
        "auth.view_user",
        "auth.view_group",
    ],
}


def sync_role_groups(**kwargs) -> None:
    """post_migrate hook: create the four groups and give each exactly its permissions."""
    from django.contrib.auth.models import Group, Permission

    for role, names in ROLE_PERMISSIONS.items():
        group, _ = Group.objects.get_or_create(name=role)
        permissions = [
            permission
            for name in names
            for permission in Permission.objects.filter(
                content_type__app_label=name.split(".")[0], codename=name.split(".")[1]
            )
        ]
        group.permissions.set(permissions)
