"""Runs one claimed execution on a worker: steps, context, checkpoints, failure policies, control requests."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
import traceback
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from django.db import InterfaceError, OperationalError, connection, transaction
from django.utils import timezone

from audit.models import AuditLogEntry
from connections.transfer.sessions import SessionPool
from courier_site.db import OutageTolerance, connection_lost
from courier_site.errors import CourierError
from jobs.definitions import check_definition
from jobs.engine import context as context_refs
from jobs.engine import control, workdirs
from jobs.engine.flow import Node, parse
from jobs.engine.states import STEP_EVENTS
from jobs.errors import Cancelled, MissingContextValue, ResumeCheckFailed, StepConfigurationError, StepTimedOut
from jobs.models import JobExecution, JobVersion, StepExecution
from jobs.policy import FailurePolicy
from jobs.secrets import unseal_config
from jobs.steps.base import CancelToken, StepContext, StepResult, get_step_type
from jobs.steps.flow import evaluate

logger = logging.getLogger(__name__)

TICK_SECONDS = 0.1  # how often the runner looks at a running step
CONTROL_POLL_SECONDS = 0.5  # pause/cancel picked up well within a second
PROGRESS_SECONDS = 2.0  # live progress and execution heartbeat
STOP_GRACE_SECONDS = 10.0  # a step that ignores its stop request this long is abandoned
LOST = "lost"  # stop reason and outcome of a run that crash recovery handed to another execution


class ExecutionStopped(Exception):
    """Ends the walk of the step tree: outcome is "failed", "paused", "cancelled" or "lost"."""

    def __init__(self, outcome: str, message: str = "", reason: str = "") -> None:
        self.outcome = outcome
        self.message = message
        self.reason = reason
        super().__init__(message or outcome)


@dataclass
class Loop:
    item: Any
    index: int


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


class ExecutionRunner:
    """Walks the pinned definition of one running execution to its end, pause or cancel."""

    def __init__(self, execution_id: Any, worker_name: str) -> None:
        self.execution = JobExecution.objects.select_related("job").get(pk=execution_id)
        self.worker_name = worker_name
        self.version = JobVersion.objects.get(
            job_id=self.execution.job_id, version_number=self.execution.job_version_number
        )
        self.definition = self.version.config_snapshot
        snapshot = self.execution.context_snapshot or {}
        self.values: dict[str, Any] = dict(snapshot.get("values") or {})
        self.completed: list[str] = list(snapshot.get("completed") or [])
        self.files: list[str] = list(snapshot.get("files") or [])
        self.skipped: list[str] = []
        self.loops: list[Loop] = []
        self.work_dir = workdirs.for_snapshot(self.execution.pk, snapshot)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.last_control_poll = 0.0
        self.last_heartbeat = time.monotonic()
        self.database = OutageTolerance(f"execution {self.execution.pk}")

        self.sessions = SessionPool()

    # ------------------------------------------------------------------ entry point
    def run(self) -> str:
        """Run to the end; returns the final state (completed, failed, paused, cancelled), or "lost"."""
        try:
            return self._run()
        finally:
            self.sessions.close()  # one session per connection per execution, closed whatever happened

    def _run(self) -> str:
        try:
            check_definition(self.definition)
            self.policy = FailurePolicy.from_json(self.definition.get("failure_policy"))
            tree = parse(self.definition.get("steps") or [])
            self._check_resume_files()
            self._set_builtins()
            self._poll_control(force=True)
            self._run_nodes(tree, prefix="")
        except ExecutionStopped as stop:
            return self._finish(stop.outcome, stop.message, stop.reason)
        except CourierError as error:  # a bad definition fails before the first step
            return self._finish("failed", str(error))
        except Exception as error:
            if isinstance(error, (OperationalError, InterfaceError)) and connection_lost(error):
                # Away past COURIER_DATABASE_OUTAGE_SECONDS: nothing can be recorded now. Crash
                # recovery fails the execution as "worker lost" once the database is back.
                logger.error("execution %s abandoned: the database stayed unavailable", self.execution.pk)
                raise
            logger.exception("execution %s crashed", self.execution.pk)
            return self._finish("failed", f"internal error: {type(error).__name__}: {error}")
        if self.skipped:
            return self._finish("failed", f"finished with failed steps skipped: {', '.join(self.skipped)}")
        return self._finish("completed")

    # ------------------------------------------------------------------ context
    def _set_builtins(self) -> None:
        started = self.execution.started_at or timezone.now()
        self.values.update(
            {
                "job.execution_id": str(self.execution.pk),
                "job.name": self.definition.get("name") or self.execution.job.name,
                "job.work_dir": str(self.work_dir),
                "job.started_at": started.isoformat(),
                "job.attempt": self.execution.attempt,
            }
        )

    def _resolve(self, value: Any) -> Any:
        return context_refs.resolve(value, self.values, now=datetime.now(UTC), execution_id=str(self.execution.pk))

    def _resolve_if_present(self, value: Any) -> Any:
        """value resolved, or None where it refers to a key or element the context does not hold.

        What `exists` asks: an output of a step in a branch that did not run, or a monitor.* key on
        a manual run, is an answer (false), not a failure. A malformed reference still fails.
        """
        try:
            return self._resolve(value)
        except MissingContextValue:
            return None

    def _set_loop_values(self) -> None:
        for key in [key for key in self.values if key.startswith("loop.")]:
            del self.values[key]
        for depth, loop in enumerate(self.loops, start=1):
            self.values[f"loop.{depth}.current_item"] = loop.item
            self.values[f"loop.{depth}.index"] = loop.index
        if self.loops:
            self.values["loop.current_item"] = self.loops[-1].item
            self.values["loop.index"] = self.loops[-1].index

    def _check_resume_files(self) -> None:
        missing = [path for path in self.files if not os.path.exists(path)]
        if missing:
            raise ResumeCheckFailed(
                f"cannot resume: {len(missing)} file(s) recorded by completed steps no longer exist "
                f"({', '.join(missing[:5])}{' …' if len(missing) > 5 else ''})"
            )

    # ------------------------------------------------------------------ tree walk
    def _run_nodes(self, nodes: list[Node], prefix: str) -> None:
        for node in nodes:
            self._between_steps_stop()
            if node.type_key == "flow.foreach":
                self._run_foreach(node, prefix)
            elif node.type_key == "flow.if":
                self._run_if(node, prefix)
            else:
                self._run_step(node.step, f"{prefix}{node.order}")

    def _run_foreach(self, node: Node, prefix: str) -> None:
        label = f"step {node.order} (flow.foreach)"
        try:
            items = self._resolve(node.step["configuration"].get("source"))
        except CourierError as error:
            raise ExecutionStopped("failed", f"{label}: {error}") from error
        if isinstance(items, str):
            with contextlib.suppress(ValueError):
                items = json.loads(items)
        if not isinstance(items, list):
            raise ExecutionStopped(
                "failed", str(StepConfigurationError(f"{label}: source must be a list, not {type(items).__name__}"))
            )
        for index, item in enumerate(items):
            self.loops.append(Loop(item, index))
            self._set_loop_values()
            try:
                self._run_nodes(node.body, f"{prefix}{node.order}[{index}].")
            finally:
                self.loops.pop()
                self._set_loop_values()

    def _run_if(self, node: Node, prefix: str) -> None:
        config = node.step["configuration"]
        operator = config["operator"]
        try:
            if operator == "exists":
                holds = evaluate(self._resolve_if_present(config.get("left")), operator, None)
            else:
                holds = evaluate(self._resolve(config.get("left")), operator, self._resolve(config.get("right")))
        except CourierError as error:
            raise ExecutionStopped("failed", f"step {node.order} (flow.if): {error}") from error
        branch = node.body if holds else (node.else_body or [])
        self._run_nodes(branch, prefix)

    # ------------------------------------------------------------------ one step
    def _run_step(self, step: dict[str, Any], position: str) -> None:
        if position in self.completed:
            return  # done before a pause or failure; its outputs are in the restored context
        step_type = get_step_type(step["type_key"])
        label = f"step {step['step_order']} ({step.get('name') or step['type_key']})"
        attempt = 0
        while True:
            row = self._start_step_row(step, position, attempt)
            started = time.monotonic()
            try:
                config = step_type.with_defaults(self._resolve(unseal_config(step.get("configuration") or {})))
                problems = step_type.validate(config, label)
                if problems:
                    raise StepConfigurationError("; ".join(problems))
                result = self._execute(step_type, step, config, row)
            except Cancelled as stop:
                if stop.reason == LOST:
                    raise ExecutionStopped(*self._stop_outcome(stop.reason)) from None  # not ours to write
                if stop.reason != "timeout":
                    self._interrupted(row, stop.reason, started)
                    raise ExecutionStopped(*self._stop_outcome(stop.reason)) from None
                error: Exception = StepTimedOut(f"{label} timed out after {step.get('timeout_seconds') or 300} s")
            except Exception as failure:  # the step's own failure: the policy decides
                error = failure
            else:
                self._complete_step(row, step, position, result, started)
                return
            will_retry = self.policy.type == "retry_step" and attempt < self.policy.max_retries
            self._fail_step_row(row, error, started, will_retry=will_retry)
            if will_retry:
                self._cleanup(step_type, step)
                self._wait(self.policy.backoff(attempt))
                attempt += 1
                continue
            if self.policy.type == "skip_and_continue":
                self._mark_skipped(row, step, label)
                return
            raise ExecutionStopped("failed", f"{label} failed: {error}")

    def _stop_outcome(self, reason: str) -> tuple[str, str, str]:
        if reason == LOST:
            return (LOST, "", reason)
        if reason in ("pause", "shutdown"):
            return ("paused", "", reason)
        return ("cancelled", "", reason)

    def _execute(self, step_type: Any, step: dict[str, Any], config: dict[str, Any], row: Any) -> StepResult:
        timeout = step.get("timeout_seconds") or 300
        token = CancelToken(deadline=time.monotonic() + timeout)
        if config.get("connection_id"):
            self.sessions.ensure(config["connection_id"])  # opened here: it reads and audits in the database
        context = StepContext(
            execution_id=str(self.execution.pk),
            work_dir=self.work_dir,
            values=self.values,
            cancel=token,
            allowed_roots=workdirs.allowed_roots(),
            log=lambda message: logger.info("execution %s: %s", self.execution.pk, message),
            sessions=self.sessions,
            prepared=step_type.prepare(config),
        )
        outcome: dict[str, Any] = {}

        def target() -> None:
            try:
                outcome["result"] = step_type.execute(config, context, token)
            except BaseException as error:  # handed to the runner thread
                outcome["error"] = error

        thread = threading.Thread(target=target, name=f"courier-step-{step['step_order']}", daemon=True)
        thread.start()
        stop_requested_at: float | None = None
        while thread.is_alive():
            thread.join(TICK_SECONDS)
            reason = self._poll_control()
            if reason:
                token.request(reason)
            if token.requested and stop_requested_at is None:
                stop_requested_at = time.monotonic()
            if stop_requested_at is not None and time.monotonic() - stop_requested_at > STOP_GRACE_SECONDS:
                # The step ignores its stop request; leave the thread behind and move on.
                logger.error("execution %s: step %s ignored its stop request", self.execution.pk, step["step_order"])
                raise Cancelled(token.reason or "cancel")
            self._heartbeat(row, context)
        self.database.retry("auditing session events", self.sessions.flush_events)
        if "error" in outcome:
            raise outcome["error"]
        return outcome.get("result") or StepResult()

    # ------------------------------------------------------------------ persistence
    def _step_state(self, row: Any) -> str | None:
        return StepExecution.objects.filter(pk=row.pk).values_list("state", flat=True).first()

    def _execution_state(self) -> str | None:
        return JobExecution.objects.filter(pk=self.execution.pk).values_list("state", flat=True).first()

    def _start_step_row(self, step: dict[str, Any], position: str, attempt: int) -> Any:
        row = StepExecution(
            id=uuid.uuid4(),
            job_execution_id=self.execution.pk,
            job_step_id=step["id"],
            step_order=step["step_order"],
            state="running",
            started_at=timezone.now(),
            retry_attempt=attempt,
            iteration_index=self.loops[-1].index if self.loops else None,
            position=position,
            step_name=step.get("name") or "",
            type_key=step["type_key"],
        )

        def write() -> None:
            with transaction.atomic():
                row.save(force_insert=True)
                self._audit_step(row, "running", {"attempt": attempt})

        self.database.retry(
            f"starting step {step['step_order']}", write, lambda: StepExecution.objects.filter(pk=row.pk).exists()
        )
        return row

    def _audit_step(self, row: Any, state: str, details: dict[str, Any]) -> None:
        AuditLogEntry.objects.record(
            entity_type="step_execution",
            entity_id=row.pk,
            operation=state,
            performed_by="system",
            details={
                "job_execution_id": str(self.execution.pk),
                "job_id": str(self.execution.job_id),
                "step_order": row.step_order,
                "position": row.position,
                "type_key": row.type_key,
                **details,
            },
            event_type=STEP_EVENTS[state],
        )

    def _save_snapshot(self) -> None:
        self.execution.context_snapshot = self._snapshot_dict()
        self.execution.heartbeat_at = timezone.now()
        self.execution.save(update_fields=["context_snapshot", "heartbeat_at", "updated_at"])

    def _complete_step(self, row: Any, step: dict[str, Any], position: str, result: StepResult, started: float) -> None:
        outputs = _jsonable(result.outputs)
        for name, value in outputs.items():
            self.values[f"{step['step_order']}.{name}"] = value
            if step.get("alias"):
                self.values[f"{step['alias']}.{name}"] = value
        self.completed.append(position)
        # Compared as real paths: a step may name a file through a link or a relative path.
        gone = {os.path.realpath(path) for path in result.removed}
        self.files = [path for path in self.files if os.path.realpath(path) not in gone]
        self.files.extend(str(Path(path)) for path in result.files)
        row.state = "completed"
        row.completed_at = timezone.now()
        row.duration_ms = int((time.monotonic() - started) * 1000)
        row.bytes_processed = result.bytes_processed
        row.output_data = outputs
        row.progress = None

        def write() -> None:
            # Checkpoint: the step row and the context snapshot commit together.
            with transaction.atomic():
                row.save()
                self._save_snapshot()
                self._audit_step(row, "completed", {"duration_ms": row.duration_ms, "bytes": row.bytes_processed})
                for entity_type, entity_id, operation, details in result.audit:
                    AuditLogEntry.objects.record(
                        entity_type=entity_type,
                        entity_id=entity_id,
                        operation=operation,
                        performed_by="system",
                        details={"job_execution_id": str(self.execution.pk), **details},
                    )

        self.database.retry(
            f"checkpoint of step {step['step_order']}", write, lambda: self._step_state(row) == "completed"
        )

    def _fail_step_row(self, row: Any, error: Exception, started: float, *, will_retry: bool = False) -> None:
        row.state = "failed"
        row.completed_at = timezone.now()
        row.duration_ms = int((time.monotonic() - started) * 1000)
        row.error_message = str(error)
        row.error_stack_trace = "".join(traceback.format_exception(error))[-8000:]
        row.progress = None

        def write() -> None:
            with transaction.atomic():
                row.save()
                self._save_snapshot()
                self._audit_step(row, "failed", {"error": str(error), "will_retry": will_retry})

        self.database.retry(f"failure of step {row.step_order}", write, lambda: self._step_state(row) == "failed")

    def _mark_skipped(self, row: Any, step: dict[str, Any], label: str) -> None:
        self.skipped.append(label)
        # The failed attempt stays on record; a skipped row says the job went on without it.
        skipped = StepExecution(
            id=uuid.uuid4(),
            job_execution_id=self.execution.pk,
            job_step_id=step["id"],
            step_order=step["step_order"],
            state="skipped",
            started_at=row.started_at,
            completed_at=timezone.now(),
            retry_attempt=row.retry_attempt,
            iteration_index=row.iteration_index,
            position=row.position,
            step_name=row.step_name,
            type_key=row.type_key,
            error_message=f"skipped after failure (skip_and_continue): {row.error_message}",
        )

        def write() -> None:
            with transaction.atomic():
                skipped.save(force_insert=True)
                self._save_snapshot()
                self._audit_step(skipped, "skipped", {"reason": "skip_and_continue"})

        self.database.retry(
            f"skipping step {row.step_order}", write, lambda: StepExecution.objects.filter(pk=skipped.pk).exists()
        )

    def _interrupted(self, row: Any, reason: str, started: float) -> None:
        notes = {
            "pause": "interrupted by pause; runs again on resume",
            "shutdown": "interrupted by worker shutdown; runs again on resume",
            "cancel": "interrupted by cancel",
        }
        row.state = "skipped"
        row.completed_at = timezone.now()
        row.duration_ms = int((time.monotonic() - started) * 1000)
        row.error_message = notes.get(reason, reason)
        row.progress = None

        def write() -> None:
            with transaction.atomic():
                row.save()
                self._save_snapshot()
                self._audit_step(row, "skipped", {"reason": reason})

        self.database.retry(f"interruption of step {row.step_order}", write, lambda: self._step_state(row) == "skipped")

    def _cleanup(self, step_type: Any, step: dict[str, Any]) -> None:
        context = StepContext(
            execution_id=str(self.execution.pk),
            work_dir=self.work_dir,
            values=self.values,
            cancel=CancelToken(),
            allowed_roots=workdirs.allowed_roots(),
        )
        try:
            configuration = unseal_config(step.get("configuration") or {})
            step_type.cleanup_before_retry(step_type.with_defaults(self._resolve(configuration)), context)
        except Exception:
            logger.exception(
                "execution %s: cleanup before retry of step %s failed", self.execution.pk, step["step_order"]
            )

    # ------------------------------------------------------------------ control and liveness
    def _poll_control(self, force: bool = False) -> str | None:
        """The pending stop reason: an operator's pause/cancel, or this worker shutting down."""
        now = time.monotonic()
        if not force and now - self.last_control_poll < CONTROL_POLL_SECONDS:
            return None
        self.last_control_poll = now
        if force:  # between steps: nothing can go on without the database anyway
            return self.database.retry("reading control requests", self._read_control)
        return self.database.unless_away(self._read_control)

    def _read_control(self) -> str | None:
        with connection.cursor() as cursor:
            cursor.execute(
                """
                SELECT e.control_request,
                       EXISTS (SELECT 1 FROM process_heartbeats h
                               WHERE h.process_name = %s AND h.stopped_at IS NOT NULL),
                       e.state = 'running' AND e.worker_name IS NOT DISTINCT FROM %s
                FROM job_executions e WHERE e.id = %s
                """,
                [self.worker_name, self.worker_name, self.execution.pk],
            )
            request, shutting_down, still_ours = cursor.fetchone()
        if not still_ours:
            # Crash recovery declared this run lost while this worker was frozen (SIGSTOP, a
            # paused VM, a long partition): a retry owns the run now. Stop at once, write nothing.
            return LOST
        if request:
            return request
        if shutting_down:
            return "shutdown"
        return None

    def _between_steps_stop(self) -> None:
        reason = self._poll_control(force=True)
        if reason:
            raise ExecutionStopped(*self._stop_outcome(reason))

    def _wait(self, seconds: float) -> None:
        """Back-off wait that still honours pause and cancel."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            time.sleep(min(TICK_SECONDS, max(0.0, deadline - time.monotonic())))
            reason = self._poll_control()
            if reason:
                raise ExecutionStopped(*self._stop_outcome(reason))
            self._heartbeat()

    def _heartbeat(self, row: Any = None, context: StepContext | None = None) -> None:
        """Every few seconds: the execution's heartbeat (crash recovery) and the step's live progress."""
        now = time.monotonic()
        if now - self.last_heartbeat < PROGRESS_SECONDS:
            return
        self.last_heartbeat = now

        def write() -> None:
            if row is not None and context is not None:
                progress = {**context.progress.as_dict(), "updated_at": timezone.now().isoformat()}
                StepExecution.objects.filter(pk=row.pk).update(progress=progress)
            JobExecution.objects.filter(pk=self.execution.pk).update(heartbeat_at=timezone.now())

        # Skipped while the database is away; the next one after it is back tells recovery we live.
        self.database.unless_away(write)

    # ------------------------------------------------------------------ the end
    def _finish(self, outcome: str, message: str = "", reason: str = "") -> str:
        if outcome == LOST:
            # The execution was failed as "worker lost" and its work directory handed to the
            # retry: leave both as they are.
            logger.warning(
                "execution %s: recovered as lost while this worker was unresponsive; stopped without writing",
                self.execution.pk,
            )
            return LOST
        # Whoever asked for the pause or cancel is named in the audit record.
        by = (
            self.database.retry(
                "reading who asked to stop",
                lambda: (
                    JobExecution.objects.filter(pk=self.execution.pk)
                    .values_list("control_requested_by", flat=True)
                    .first()
                ),
            )
            or "system"
        )
        if outcome == "paused":
            self._transition_once(
                "paused",
                by=by,
                details={"reason": reason},
                control_request=None,
                context_snapshot=self._snapshot_dict(),
            )
            if reason == "shutdown":
                # Another worker carries on from the checkpoint.
                self._transition_once("queued", by="system", details={"reason": "worker shutdown"}, worker_name=None)
            return "paused"
        # The work directory goes before the final state is written: whoever sees the
        # execution ended (an operator, a chain, a dependent job) never finds it still there.
        if outcome == "cancelled":
            workdirs.remove_path(self.work_dir)
            self._transition_once(
                "cancelled",
                by=by,
                control_request=None,
                error_message=f"cancelled by {by}",
                context_snapshot=self._snapshot_dict(),
            )
            return "cancelled"
        if outcome == "completed":
            workdirs.remove_path(self.work_dir)
            self._transition_once("completed", context_snapshot=self._snapshot_dict())
            return "completed"

        def write() -> None:
            # The failed state, the retry its policy asks for, and what follows from the failure
            # (chain members skipped, dependent jobs queued) commit together.
            with transaction.atomic():
                failed = control.transition(
                    self.execution.pk,
                    "failed",
                    details={"error": message},
                    error_message=message,
                    control_request=None,
                    context_snapshot=self._snapshot_dict(),
                    followups=False,
                )
                control.after_finish(failed, retried_by=self._maybe_retry_job())

        self.database.retry("recording its failure", write, lambda: self._execution_state() == "failed")
        return "failed"

    def _transition_once(self, new_state: str, **fields: Any) -> None:
        self.database.retry(
            f"moving to {new_state}",
            lambda: control.transition(self.execution.pk, new_state, **fields),
            lambda: self._execution_state() == new_state,
        )

    def _snapshot_dict(self) -> dict[str, Any]:
        return {
            "values": _jsonable(self.values),
            "completed": self.completed,
            "files": self.files,
            "skipped": self.skipped,
        }

    def _maybe_retry_job(self) -> JobExecution | None:
        policy = getattr(self, "policy", None)
        if policy is None or policy.type != "retry_job" or self.execution.attempt > policy.max_retries:
            return None

        failed = JobExecution.objects.get(pk=self.execution.pk)
        return control.enqueue(
            failed.job,
            triggered_by=f"retry:{failed.pk}",
            attempt=failed.attempt + 1,
            retry_of=failed,
            version_number=failed.job_version_number,
            chain_execution_id=failed.chain_execution_id,
            context={
                key: value
                for key, value in (failed.context_snapshot or {}).get("values", {}).items()
                if key.startswith(("monitor.", "chain.", "trigger."))
            },
        )
