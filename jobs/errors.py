"""Error types of the job engine, each with its stable code."""

from __future__ import annotations

from courier_site.errors import CourierError


class UnknownStepType(CourierError):
    code = "E2001"


class StepConfigurationError(CourierError):
    """A step's configuration is missing a key or holds a value of the wrong kind."""

    code = "E2002"


class ContextReferenceError(CourierError):
    """A `context:` reference names a key that the context does not hold."""

    code = "E2003"


class MissingContextValue(ContextReferenceError):
    """A well-formed `context:` reference whose key or element the context does not hold (yet)."""


class InvalidFailurePolicy(CourierError):
    code = "E2004"


class StepSlotTaken(CourierError):
    """Another step of the same job already has this step order or alias."""

    code = "E2009"


class IllegalTransition(CourierError):
    code = "E2010"


class ControlFlowError(CourierError):
    """Unmatched or misplaced flow.* blocks."""

    code = "E2025"


class StepTimedOut(CourierError):
    code = "E2030"


class PathNotAllowed(CourierError):
    """A path escapes the allowed base directories."""

    code = "E2040"


class StepFailed(CourierError):
    """A step could not do its work (missing source file, target exists …)."""

    code = "E2050"


class ArchiveError(CourierError):
    """An archive is corrupt, of an unsupported format, or its password is wrong."""

    code = "E7001"


class HostileArchive(CourierError):
    """An archive breaks the extraction limits or tries to write outside its output directory."""

    code = "E7004"


class Cancelled(Exception):
    """Raised inside a step when its execution was paused, cancelled or timed out.

    reason is "pause", "cancel", "timeout" or "shutdown".
    """

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class ResumeCheckFailed(CourierError):
    """A file recorded by a completed step is gone, so the execution cannot resume from its checkpoint."""

    code = "E2015"
