"""A process a test starts dies with the process that started it, even when that one is SIGKILLed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.child_processes import SETPRIV, tied_to_test_run

pytestmark = pytest.mark.skipif(SETPRIV is None, reason="util-linux setpriv is missing")


def alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in status


def test_the_command_keeps_its_own_pid_and_arguments() -> None:
    process = subprocess.Popen(tied_to_test_run(["sleep", "30"]))
    try:
        deadline = time.monotonic() + 5
        while Path(f"/proc/{process.pid}/cmdline").read_bytes() != b"sleep\x0030\x00":
            assert time.monotonic() < deadline, "setpriv never became the command"
            time.sleep(0.02)
    finally:
        process.kill()
        process.wait(5)


def test_a_killed_parent_takes_its_tied_child_with_it(tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    # The parent stands in for pytest: it starts a tied child, says its PID and waits to be killed.
    parent_code = (
        "import subprocess, sys, time\n"
        "from tests.child_processes import tied_to_test_run\n"
        "child = subprocess.Popen(tied_to_test_run(['sleep', '60']))\n"
        f"open({str(pid_file)!r}, 'w').write(str(child.pid))\n"
        "time.sleep(60)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", parent_code], cwd=Path(__file__).resolve().parent.parent)
    child_pid = None
    try:
        deadline = time.monotonic() + 10
        while not (pid_file.exists() and pid_file.read_text()):
            assert time.monotonic() < deadline, "the parent never started its child"
            time.sleep(0.05)
        child_pid = int(pid_file.read_text())
        assert alive(child_pid)
        parent.kill()
        parent.wait(5)
        deadline = time.monotonic() + 5
        while alive(child_pid):
            assert time.monotonic() < deadline, "the child outlived its SIGKILLed parent"
            time.sleep(0.05)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait(5)
        if child_pid is not None and alive(child_pid):
            os.kill(child_pid, signal.SIGKILL)
