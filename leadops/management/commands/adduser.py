"""`manage.py adduser USERNAME --role ROLE [--password PW] [--email E] [--update]`."""

from __future__ import annotations

import secrets

from django.contrib.auth import get_user_model
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils.translation import gettext as _

from leadops.roles import Role, create_user_with_role, update_user_role


class Command(BaseCommand):
    help = "Create a staff user in one of the roles (marketer, inside_sales, sales, manager)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username")
        parser.add_argument("--role", required=True, help=", ".join(Role.ALL))
        parser.add_argument("--password", help="a random one is made and printed if omitted")
        parser.add_argument("--email", default=None)
        parser.add_argument(
            "--update", action="store_true", help="set role/password of an existing user"
        )

    def handle(self, *args, username: str, role: str, password: str | None, **options) -> None:
        if role not in Role.ALL:
            raise CommandError(
                _('Unknown role "%(role)s". Choose one of: %(roles)s.')
                % {"role": role, "roles": ", ".join(Role.ALL)}
            )
        user = get_user_model().objects.filter(username=username).first()
        if user is not None and not options["update"]:
            raise CommandError(
                _('User "%(username)s" already exists. Add --update to change their role.')
                % {"username": username}
            )
        generated = password is None and user is None
        if generated:
            password = secrets.token_urlsafe(12)
        elif password is not None:
            self._check_password(password, username)
        self._save(user, username, role=role, password=password, email=options["email"])
        if generated:
            self.stdout.write(_("Password: %(password)s") % {"password": password})

    def _save(self, user, username: str, *, role: str, password: str | None, email) -> None:
        if user is None:
            create_user_with_role(username, role=role, password=password, email=email or "")
            message = _('Created user "%(username)s" with role %(role)s.')
        else:
            update_user_role(user, role=role, password=password, email=email)
            message = _('Updated user "%(username)s": role %(role)s.')
        self.stdout.write(self.style.SUCCESS(message % {"username": username, "role": role}))

    def _check_password(self, password: str, username: str) -> None:
        try:
            validate_password(password, get_user_model()(username=username))
        except ValidationError as exc:
            raise CommandError(
                _("The password was refused: %(reasons)s Choose a longer, less common one.")
                % {"reasons": " ".join(exc.messages)}
            ) from exc
