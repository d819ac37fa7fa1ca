"""`manage.py load_demo`: a demo job and sample files, so a newcomer can press "Run now" and watch it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand
from django.db import transaction

from jobs import scheduling
from jobs.definitions import record_version
from jobs.models import ChainSchedule, Job, JobChain, JobChainMember, JobStep
from monitors.models import FileMonitor, MonitorJobBinding

DEMO_JOB = "Demo: package the partner inbox"
DEMO_ARCHIVE_JOB = "Demo: archive delivered packages"
DEMO_CHAIN = "Demo: nightly partner run"
DEMO_DROP_JOB = "Demo: deliver each dropped file"
DEMO_MONITOR = "Demo: partner drop folder"


class Command(BaseCommand):
    help = (
        "Create sample files, a demo job (zip the inbox, verify the archive, deliver it) and a nightly demo "
        "chain. Safe to run twice."
    )

    def handle(self, *args: Any, **options: Any) -> None:
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
        (demo / "archive").mkdir(exist_ok=True)
        drop = demo / "drop"
        drop.mkdir(exist_ok=True)
        if not Job.objects.filter(name=DEMO_DROP_JOB).exists():
            with transaction.atomic():
                self._create_drop_monitor(demo, drop)
            self.stdout.write(
                f"Created monitor '{DEMO_MONITOR}': drop any file into {drop} and watch it being packed and "
                f"delivered to {demo / 'outbound'} within seconds."
            )
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
            self._create_chain(job, demo)
        self.stdout.write(
            f"Created demo job '{DEMO_JOB}' and chain '{DEMO_CHAIN}' (scheduled daily at 02:00 UTC); "
            f"sample files are in {inbox}."
        )

    def _create_chain(self, package_job: Any, demo: Path) -> None:
        """A second job that archives what the first delivered, chained after it and scheduled nightly."""

        archive_job = Job.objects.create(
            name=DEMO_ARCHIVE_JOB,
            description="Moves the packages the demo delivered into the demo archive folder.",
        )
        JobStep.objects.create(
            job=archive_job,
            step_order=0,
            name="Archive delivered packages",
            type_key="file.move",
            configuration={"source_path": f"{demo / 'outbound'}/*.zip", "destination_path": f"{demo / 'archive'}/"},
        )
        record_version(archive_job, created_by="system")
        chain = JobChain.objects.create(
            name=DEMO_CHAIN,
            description="Packages the inbox, then archives the delivered package; the second member only "
            "runs when the first completed.",
        )
        first = JobChainMember.objects.create(chain=chain, job=package_job, execution_order=0)
        JobChainMember.objects.create(chain=chain, job=archive_job, execution_order=1, depends_on_member=first)
        schedule = ChainSchedule(chain=chain, schedule_type="cron", cron_expression="0 2 * * *")
        scheduling.refresh(schedule)
        schedule.save()

    def _create_drop_monitor(self, demo: Path, drop: Path) -> None:
        """A local monitor on the drop folder, one run per file: pack it, deliver it, clear the drop folder."""

        job = Job.objects.create(
            name=DEMO_DROP_JOB,
            description="Run by the demo monitor for each file dropped in the demo drop folder: zips the file, "
            "copies the archive to the demo outbound folder and removes the dropped file.",
        )
        dropped = "context:monitor.triggered_files[0].path"
        steps = [
            ("Pack the dropped file", "file.zip", {"source_path": dropped, "output_path": "out/{execution_id}.zip"}),
            (
                "Deliver",
                "file.copy",
                {"source_path": "context:pack.archive_path", "destination_path": f"{demo / 'outbound'}/"},
            ),
            ("Clear the drop folder", "file.delete", {"path": dropped}),
        ]
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
        monitor = FileMonitor.objects.create(
            name=DEMO_MONITOR,
            description="Watches the demo drop folder; each file triggers its own run once unchanged for 2 s.",
            watch_target={"type": "local", "path": str(drop)},
            trigger_events=1,
            polling_interval_sec=30,
            stability_window_sec=2,
            batch_mode=False,
        )
        MonitorJobBinding.objects.create(monitor=monitor, job=job)
