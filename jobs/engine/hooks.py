"""Where the layers above the engine plug in: checks before a run is queued, reactions to a run that ended.

The engine never imports the modules that react (chains, dependencies): they register
here from JobsConfig.ready(), and the engine calls whatever is registered. Imports keep
one direction, and the reactions still run inside the transaction that writes the
execution's final state, so a chain moves on and a downstream job is queued exactly when
that state commits.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from jobs.models import Job, JobExecution

# (job, triggered_by): raise a CourierError to refuse the run (e.g. unmet upstreams [E2008]).
StartCheck = Callable[["Job", str], None]
# (execution that ended, the retry its failure policy queued or None).
FinishHandler = Callable[["JobExecution", "JobExecution | None"], Any]

_start_checks: dict[str, StartCheck] = {}
_finish_handlers: dict[str, FinishHandler] = {}


def register_start_check(name: str, check: StartCheck) -> None:
    """Run check before every execution is queued; registering a name again replaces it."""
    _start_checks[name] = check


def register_finish_handler(name: str, handler: FinishHandler) -> None:
    """Call handler, in registration order, when an execution ends; a name registered again replaces it."""
    _finish_handlers[name] = handler


def start_checks() -> list[tuple[str, StartCheck]]:
    return list(_start_checks.items())


def finish_handlers() -> list[tuple[str, FinishHandler]]:
    return list(_finish_handlers.items())
