"""`manage.py load_demo [--leads N] [--accounts N] [--days N] [--seed N] [--force]`.

Sizes default to the LEADOPS_DEMO_* environment variables, so `make run` and its smoke
test can ask for a smaller workspace without changing the command line.
"""

from __future__ import annotations

import os

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils.translation import gettext as _

from handoff.demo import play_demo_handoffs
from leadops import demo

# (option, environment variable, default)
SIZES = (
    ("leads", "LEADOPS_DEMO_LEADS", demo.DEFAULT_LEADS),
    ("accounts", "LEADOPS_DEMO_ACCOUNTS", demo.DEFAULT_ACCOUNTS),
    ("days", "LEADOPS_DEMO_DAYS", demo.DEFAULT_DAYS),
)


def _env_size(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    if not value.isdigit():
        raise CommandError(
            _("%(name)s must be a whole number, not %(value)r.") % {"name": name, "value": value}
        )
    return int(value)


class Command(BaseCommand):
    help = "Load the demo workspace: users per role, Japanese B2B accounts, leads and events."

    def add_arguments(self, parser: CommandParser) -> None:
        for name, env_name, default in SIZES:
            parser.add_argument(
                f"--{name}", type=int, default=None, help=f"{env_name} or {default}"
            )
        parser.add_argument("--seed", type=int, default=demo.DEFAULT_SEED)
        parser.add_argument(
            "--force", action="store_true", help="load even when DEBUG is off (a demo server)"
        )

    def handle(self, *args, **options) -> None:
        if not settings.DEBUG and not options["force"]:
            raise CommandError(
                _(
                    "DEBUG is off: the demo users have a published password. "
                    "Add --force if this really is a demo server."
                )
            )
        sizes = self._sizes(options)
        summary = demo.load_demo_workspace(seed=options["seed"], **sizes)
        # The one place the demo asks for scores: every lead, once the data is in.
        demo.rescore_all_leads()
        # Its MQLs are now in the IS queue: give them a realistic day of work.
        play_demo_handoffs(seed=options["seed"])
        self.stdout.write(
            self.style.SUCCESS(
                _(
                    "Demo workspace ready: added %(users)d users, %(accounts)d accounts, "
                    "%(leads)d leads, %(activities)d activities."
                )
                % vars(summary)
            )
        )

    def _sizes(self, options: dict) -> dict[str, int]:
        sizes = {
            name: options[name] if options[name] is not None else _env_size(env_name, default)
            for name, env_name, default in SIZES
        }
        if min(sizes.values()) < 1:
            raise CommandError(_("--leads, --accounts and --days must be at least 1."))
        return sizes
