"""Long-running processes the tests start die with the test run, even when pytest is killed.

The tests stop what they start by PID; this covers the run that never gets to its teardown
(SIGKILL, a CI timeout). `setpriv --pdeathsig KILL` asks the kernel to SIGKILL the command
when the thread that started it exits, and then execs the command, so its PID is the
command's own. Celery's pool processes already die with their worker the same way.
"""

from __future__ import annotations

import shutil

SETPRIV = shutil.which("setpriv")


def tied_to_test_run(command: list[str]) -> list[str]:
    """command, made to receive SIGKILL when the test process (thread) that starts it dies."""
    if SETPRIV is None:
        return list(command)
    return [SETPRIV, "--pdeathsig", "KILL", "--", *command]
