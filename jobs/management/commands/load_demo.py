"""`manage.py load_demo`: a demo job and sample files, so a newcomer can press "Run now" and watch it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand
from django.db import transaction

from jobs.definitions import record_version

DEMO_JOB = "Demo: package the partner inbox"


class Command(BaseCommand):
    help = "Create sample files and a demo job (zip the inbox, verify the archive, deliver it). Safe to run twice."

    def handle(self, *args: Any, **options: Any) -> None:
        from jobs.models import Job, JobStep

        demo = Path(settings.COURIER_DATA_DIR) / "demo"
        inbox = demo / "inbox"
        inbox.mkdir(parents=True, exist_ok=True)
        (demo / "outbound").mkdir(exist_ok=True)
        for name, text in {
            "invoices-2026-11.csv": "invoice,amount,currency\nINV-1001,1200.00,EUR\nINV-1002,89.90,EUR\n",
            "orders-2026-11.csv": "order,sku,quantity\nPO-77,WIDGET-9,40\n",
        }.items():
            if not (inbox / name).exists():
                (inbox / name).write_text(text)
        if Job.objects.filter(name=DEMO_JOB).exists():
            self.stdout.write(f"Demo job '{DEMO_JOB}' already exists; sample files are in {inbox}.")
            return
        steps = [
            (
                "Pack the inbox",
                "file.zip",
                {"source_path": f"{inbox}/*.csv", "output_path": "out/inbox-{date:%Y%m%d}-{execution_id}.zip"},
            ),
            (
                "Verify the archive",
                "file.unzip",
                {"archive_path": "context:pack.archive_path", "output_directory": "verify/"},
            ),
            (
                "Deliver",
                "file.copy",
                {"source_path": "context:pack.archive_path", "destination_path": f"{demo / 'outbound'}/"},
            ),
        ]
        with transaction.atomic():
            job = Job.objects.create(
                name=DEMO_JOB,
                description="Zips the CSV files of the demo inbox, checks the "
                "archive opens, and copies it to the demo outbound folder.",
            )
            for order, (name, type_key, configuration) in enumerate(steps):
                JobStep.objects.create(
                    job=job,
                    step_order=order,
                    name=name,
                    type_key=type_key,
                    configuration=configuration,
                    alias="pack" if order == 0 else None,
                )
            record_version(job, created_by="system")
        self.stdout.write(f"Created demo job '{DEMO_JOB}'; sample files are in {inbox}.")
