"""`manage.py rescore_leads [ID …]`: recompute scores (all leads when no id is given)."""

from __future__ import annotations

import time

from django.core.management.base import BaseCommand

from scoring.services import rescore_leads


class Command(BaseCommand):
    help = "Recompute lead scores from their fields and events under the active model."

    def add_arguments(self, parser) -> None:
        parser.add_argument("ids", nargs="*", type=int, help="Lead ids (default: every lead).")

    def handle(self, *args, ids: list[int], **options) -> None:
        started = time.perf_counter()
        result = rescore_leads(ids or None, reason="recalculation")
        seconds = time.perf_counter() - started
        self.stdout.write(
            f"Rescored {result.leads} leads in {seconds:.1f} s: {result.changed} changed, "
            f"{len(result.marked_mql)} became MQL."
        )
