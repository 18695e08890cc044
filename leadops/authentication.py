"""Token authentication that loads the user and their roles in one query.

Every integration call authenticates, and almost every one then asks for the caller's
roles; DRF's TokenAuthentication plus the groups lookup is two round trips per request
on the hottest path (single-event ingest). This is one, and not cached, so a deleted
token or a changed role takes effect on the next request.
"""

from __future__ import annotations

from django.contrib.postgres.aggregates import ArrayAgg
from django.db.models import Q
from django.utils.translation import gettext_lazy as _
from rest_framework import exceptions
from rest_framework.authentication import TokenAuthentication
from rest_framework.authtoken.models import Token


class TokenWithRolesAuthentication(TokenAuthentication):
    def authenticate_credentials(self, key: str):
        token = (
            Token.objects.select_related("user")
            .annotate(
                role_names=ArrayAgg(
                    "user__groups__name", filter=Q(user__groups__isnull=False), default=[]
                )
            )
            .filter(key=key)
            .first()
        )
        if token is None:
            raise exceptions.AuthenticationFailed(_("Invalid token."))
        if not token.user.is_active:
            raise exceptions.AuthenticationFailed(_("User inactive or deleted."))
        # The cache leadops.roles.roles_of reads, filled from the same row.
        token.user._leadops_roles = set(token.role_names)
        return token.user, token
