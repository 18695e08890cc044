"""`manage.py decay_scores [--now ISO]`: the decay pass, as the daily beat task runs it."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError
from django.utils.dateparse import parse_datetime

from scoring.services import apply_decay


class Command(BaseCommand):
    help = "Apply the active scoring model's decay to leads without recent activity."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--now", help="Clock to decay to (ISO 8601 with offset); default now.")

    def handle(self, *args, now: str | None = None, **options) -> None:
        moment = parse_datetime(now) if now else None
        if now and (moment is None or moment.tzinfo is None):
            raise CommandError(
                "--now must be an ISO 8601 time with an offset, e.g. 2025-04-01T03:00+09:00."
            )
        changed = apply_decay(now=moment)
        self.stdout.write(f"Decay applied: {changed} leads changed.")
