"""`manage.py import_leads FILE [--source S] [--dry-run] [--encoding auto|utf-8|cp932]`."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError, CommandParser

from leadops.csv_import import ENCODINGS, CsvImportError, import_leads_csv, report_lines


class Command(BaseCommand):
    help = (
        "Import leads from a CSV lead list (UTF-8 or Shift_JIS), matched by email, and "
        "print a summary and the rows in error. Exits non-zero when the file is rejected."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("file", help="The CSV file to import.")
        parser.add_argument(
            "--source", default="", help='Source for rows without one, e.g. "展示会 2026-11".'
        )
        parser.add_argument(
            "--dry-run", action="store_true", help="Check the file and report; save nothing."
        )
        parser.add_argument("--encoding", choices=ENCODINGS, default="auto")

    def handle(self, *args, **options) -> None:
        try:
            with open(options["file"], "rb") as stream:
                report = import_leads_csv(
                    stream,
                    default_source=options["source"],
                    dry_run=options["dry_run"],
                    encoding=options["encoding"],
                )
        except OSError as exc:
            raise CommandError(f"{options['file']}: {exc.strerror or exc}") from exc
        except CsvImportError as exc:
            raise CommandError(f"{options['file']}: {exc}") from exc
        for line in report_lines(report):
            self.stdout.write(line)
