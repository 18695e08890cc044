"""`manage.py issuetoken USERNAME [--rotate]`: the API token is the last line printed."""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils.translation import gettext as _

from leadops.roles import issue_api_token


class Command(BaseCommand):
    help = "Print a user's API token (created if missing); --rotate replaces it."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username")
        parser.add_argument(
            "--rotate", action="store_true", help="revoke the current token and make a new one"
        )

    def handle(self, *args, username: str, rotate: bool, **options) -> None:
        user = get_user_model().objects.filter(username=username).first()
        if user is None:
            raise CommandError(
                _(
                    'No user "%(username)s". Create one first: manage.py adduser %(username)s '
                    "--role ROLE"
                )
                % {"username": username}
            )
        token, created = issue_api_token(user, rotate=rotate)
        note = _("New token for %(username)s:") if created else _("Token for %(username)s:")
        # The key alone on the last line, so scripts can take it with `tail -n 1`.
        self.stdout.write(note % {"username": username})
        self.stdout.write(token.key)
