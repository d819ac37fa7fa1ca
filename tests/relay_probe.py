"""A relay process for fault tests: the real relay plus a probe subscriber that records who handled what.

    python -m tests.relay_probe --batch 50 --pause 0.05

The probe writes (event_id, pid) into relay_probe (made by the test) in the relay's own
transaction, so only batches that committed leave rows; --pause slows each batch down so a
test can kill the process in the middle of its work.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Sequence

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "courier_site.settings")
django.setup()

from django.db import connection  # noqa: E402 (Django must be set up first)

from audit.relay import RelayedEvent, register_subscriber, relay_until_idle  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--pause", type=float, default=0.0)
    options = parser.parse_args()

    def probe(events: Sequence[RelayedEvent]) -> None:
        with connection.cursor() as cursor:
            cursor.executemany(
                "INSERT INTO relay_probe (event_id, pid) VALUES (%s, %s)", [(event.id, os.getpid()) for event in events]
            )
        time.sleep(options.pause)

    register_subscriber("probe", probe)
    result = relay_until_idle(limit=options.batch, max_seconds=120)
    print(f"handled {result.handled}", flush=True)


if __name__ == "__main__":
    main()
