#!/usr/bin/env python
"""Django's command-line utility for LeadOps."""

import os
import sys


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "leadops.settings")
    from leadops.engines import ensure_embedded_engines

    # Without DATABASE_URL / REDIS_URL every command talks to the embedded engines
    # under ./var/, the same ones `make run` uses; start them if they are down.
    ensure_embedded_engines()
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
