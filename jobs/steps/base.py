"""The step plug-in interface: one class per step type, registered under its type key."""

from __future__ import annotations

import importlib
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from django.conf import settings

from jobs.errors import Cancelled, StepConfigurationError, StepFailed, UnknownStepType

_KINDS: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "list": (list,),
    "string_or_list": (str, list),
    "object": (dict,),
    "any": (object,),
}


@dataclass(frozen=True)
class ConfigField:
    """One documented configuration key of a step type."""

    name: str
    kind: str = "string"
    required: bool = False
    default: Any = None
    help: str = ""
    choices: tuple[Any, ...] = ()
    secret: bool = False
    # What stored object the value names by id ("pgp_key"): exports write it portably instead.
    references: str = ""

    def check(self, step_label: str, value: Any) -> str | None:
        """An error message for a value of the wrong kind, or None."""
        if self.secret and isinstance(value, dict) and set(value) == {"sealed"}:
            return None  # sealed with the master key (jobs.secrets); opened just before the step runs
        if isinstance(value, str) and value.startswith("context:") and self.kind != "string":
            return None  # resolved at run time; checked again then
        expected = _KINDS[self.kind]
        if self.kind in {"integer", "number"} and isinstance(value, bool):
            return f"{step_label}: key '{self.name}' must be {self.kind}, not boolean"
        if not isinstance(value, expected):
            return f"{step_label}: key '{self.name}' must be {self.kind}, not {type(value).__name__}"
        if self.choices and value not in self.choices:
            allowed = ", ".join(map(str, self.choices))
            return f"{step_label}: key '{self.name}' must be one of {allowed}, not {value!r}"
        return None


class CancelToken:
    """Cooperative stop signal handed to a running step.

    Steps call check() between chunks; it raises Cancelled when the execution was
    paused or cancelled, or when the step's deadline passed.
    """

    def __init__(self, deadline: float | None = None) -> None:
        self._event = threading.Event()
        self.reason: str | None = None
        self.deadline = deadline

    def request(self, reason: str) -> None:
        if self.reason is None:
            self.reason = reason
        self._event.set()

    @property
    def requested(self) -> bool:
        if self.deadline is not None and time.monotonic() >= self.deadline:
            self.request("timeout")
        return self._event.is_set()

    def check(self) -> None:
        if self.requested:
            raise Cancelled(self.reason or "cancel")

    def wait(self, seconds: float) -> bool:
        """Sleep up to seconds, waking early on a stop request; True when stopped."""
        if self.deadline is not None:
            seconds = min(seconds, max(0.0, self.deadline - time.monotonic()))
        self._event.wait(seconds)
        return self.requested


@dataclass
class Progress:
    """Live progress of a step (bytes, total, rate); the engine persists it every few seconds."""

    bytes_done: int = 0
    bytes_total: int | None = None
    started: float = field(default_factory=time.monotonic)
    message: str = ""

    def add(self, count: int) -> None:
        self.bytes_done += count

    @property
    def rate(self) -> float:
        elapsed = time.monotonic() - self.started
        return self.bytes_done / elapsed if elapsed > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "bytes_done": self.bytes_done,
            "bytes_total": self.bytes_total,
            "rate_bytes_per_second": round(self.rate, 1),
            "message": self.message,
        }


@dataclass
class StepContext:
    """What a running step may use: resolved context values, its work dir, cancel and progress."""

    execution_id: str
    work_dir: Path
    values: dict[str, Any]
    cancel: CancelToken
    progress: Progress = field(default_factory=Progress)
    allowed_roots: tuple[Path, ...] = ()
    log: Callable[[str], None] = lambda message: None
    # Remote sessions of the execution (connections.transfer.sessions.SessionPool), opened
    # by the runner before a step that names a connection_id.
    sessions: Any = None
    # What the step's prepare() fetched in the runner's thread (keys, notes for the outputs).
    prepared: dict[str, Any] = field(default_factory=dict)


@dataclass
class StepResult:
    """Outputs of a finished step, stored under "<step_order>.<name>" in the execution context."""

    outputs: dict[str, Any] = field(default_factory=dict)
    bytes_processed: int = 0
    # Files the step left behind that later steps rely on; resume checks they still exist.
    files: list[str] = field(default_factory=list)
    # Files the step moved away or deleted: no longer expected when the run resumes.
    removed: list[str] = field(default_factory=list)
    # Audit records the step asks for (entity_type, entity_id, operation, details); the
    # runner writes them with the step's checkpoint, from its own thread.
    audit: list[tuple[str, str, str, dict[str, Any]]] = field(default_factory=list)


class StepType:
    """Base class of every step type. Subclasses set type_key, fields and outputs and implement execute()."""

    type_key: ClassVar[str] = ""
    label: ClassVar[str] = ""
    description: ClassVar[str] = ""
    fields: ClassVar[tuple[ConfigField, ...]] = ()
    outputs: ClassVar[tuple[str, ...]] = ()
    # Steps that only shape control flow (flow.*) are interpreted by the engine itself.
    is_control_flow: ClassVar[bool] = False

    def field_map(self) -> dict[str, ConfigField]:
        return {config_field.name: config_field for config_field in self.fields}

    def with_defaults(self, config: dict[str, Any]) -> dict[str, Any]:
        merged = {f.name: f.default for f in self.fields if f.default is not None}
        merged.update(config)
        return merged

    def validate(self, config: dict[str, Any], step_label: str = "step") -> list[str]:
        """Problems with config (missing, unknown or mistyped keys); empty when it is valid."""
        problems = []
        if not isinstance(config, dict):
            return [f"{step_label}: configuration must be a JSON object"]
        known = self.field_map()
        for name in config:
            if name not in known:
                problems.append(f"{step_label}: unknown key '{name}' for {self.type_key}")
        for config_field in self.fields:
            if config_field.name not in config or config[config_field.name] in (None, ""):
                if config_field.required:
                    problems.append(f"{step_label}: required key '{config_field.name}' is missing")
                continue
            message = config_field.check(step_label, config[config_field.name])
            if message:
                problems.append(message)
        return problems

    def execute(self, config: dict[str, Any], context: StepContext, cancel: CancelToken) -> StepResult:
        """Do the step's work; every runnable step type overrides this. Control-flow types
        (flow.*) are interpreted by the engine and never reach it."""

        raise StepFailed(f"step type {self.type_key} cannot run on its own")

    def prepare(self, config: dict[str, Any]) -> dict[str, Any]:
        """Runs in the runner's thread before execute(): the place for database reads and audit
        records (keys, connections). execute() itself runs in a worker thread without them."""
        return {}

    def cleanup_before_retry(self, config: dict[str, Any], context: StepContext) -> None:
        """Remove partial output of a failed attempt; the default has nothing to remove."""


_registry: dict[str, type[StepType]] = {}


def register(step_class: type[StepType]) -> type[StepType]:
    """Class decorator: make a step type available under its type_key."""
    if not step_class.type_key:
        raise ValueError(f"{step_class.__name__} has no type_key")
    if step_class.type_key in _registry and _registry[step_class.type_key] is not step_class:
        raise ValueError(f"step type {step_class.type_key} registered twice")
    _registry[step_class.type_key] = step_class
    return step_class


def get_step_type(type_key: str) -> StepType:
    """An instance of the registered step type; unknown keys raise UnknownStepType [E2001]."""
    _load_builtin_steps()
    try:
        return _registry[type_key]()
    except KeyError:
        raise UnknownStepType(f"unknown step type '{type_key}'") from None


def registered_types() -> dict[str, type[StepType]]:
    _load_builtin_steps()
    return dict(sorted(_registry.items()))


def validate_step(type_key: str, config: dict[str, Any], step_label: str) -> None:
    """Raise StepConfigurationError [E2002] naming the step and key when config is invalid."""
    problems = get_step_type(type_key).validate(config, step_label)
    if problems:
        raise StepConfigurationError("; ".join(problems))


BUILTIN_STEP_MODULES = (
    "jobs.steps.flow",
    "jobs.steps.files",
    "jobs.steps.archive",
    "connections.steps",
    "keystore.steps",
)
_loaded = False


def _load_builtin_steps() -> None:
    """Import the modules that register step types: the built-in ones and COURIER_STEP_MODULES plug-ins."""
    global _loaded
    if _loaded:
        return

    for module in (*BUILTIN_STEP_MODULES, *getattr(settings, "COURIER_STEP_MODULES", [])):
        importlib.import_module(module)
    _loaded = True


def as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value]


def iter_chunks(stream: Any, cancel: CancelToken, size: int = 1024 * 1024) -> Iterable[bytes]:
    """Read a binary stream in chunks, checking for cancel between chunks."""
    while True:
        cancel.check()
        chunk = stream.read(size)
        if not chunk:
            return
        yield chunk
