"""The embedded run's demo data: a dropped file is picked up by the demo monitor and delivered."""

from __future__ import annotations

import os
import time
import zipfile

import pytest
from django.core.management import call_command

from jobs.engine import control
from jobs.engine.runner import ExecutionRunner
from jobs.models import JobExecution
from monitors import services
from monitors.models import FileMonitor

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def data_dir(settings, tmp_path):
    settings.COURIER_DATA_DIR = tmp_path / "data"
    settings.COURIER_ALLOWED_ROOTS = [settings.COURIER_DATA_DIR]
    return settings.COURIER_DATA_DIR


def test_a_file_dropped_in_the_demo_folder_is_packed_and_delivered(data_dir) -> None:
    call_command("load_demo")
    call_command("load_demo")  # safe to run twice
    monitor = FileMonitor.objects.get(name="Demo: partner drop folder")
    dropped = data_dir / "demo" / "drop" / "invoice-7.csv"
    dropped.write_text("invoice,amount\nINV-7,70.00\n")
    finished = time.time() - monitor.stability_window_sec - 0.1  # written and left alone for the window
    os.utime(dropped, (finished, finished))

    result = services.poll(monitor.pk)

    [execution_id] = result.executions
    assert control.claim(execution_id, "demo-test")
    ExecutionRunner(execution_id, "demo-test").run()
    execution = JobExecution.objects.get(pk=execution_id)
    assert execution.state == "completed", execution.error_message
    [delivered] = (data_dir / "demo" / "outbound").glob("*.zip")
    with zipfile.ZipFile(delivered) as archive:
        assert archive.read("invoice-7.csv").startswith(b"invoice,amount")
    assert not dropped.exists()
    assert FileMonitor.objects.filter(name__startswith="Demo:").count() == 1
