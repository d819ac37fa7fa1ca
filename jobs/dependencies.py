"""Job dependencies: edge checks (cycles, self, duplicates) and the downstream runs they trigger (SPEC 4.6)."""

from __future__ import annotations

import logging
from collections import defaultdict, deque
from collections.abc import Iterable
from typing import Any

from audit.models import AuditLogEntry
from courier_site.errors import CourierError
from jobs.engine import control
from jobs.models import Job, JobDependency, JobExecution

logger = logging.getLogger(__name__)


class DependencyCycle(CourierError):
    code = "E2005"


class SelfDependency(CourierError):
    code = "E2006"


class DuplicateDependency(CourierError):
    code = "E2007"


class DependencyNotMet(CourierError):
    """A job whose upstream's latest run did not complete is not started."""

    code = "E2008"


# Triggers that are themselves part of an orchestration: a dependency run checks every
# upstream before it queues, a chain orders its own members, and a retry repeats a run
# that already passed the check.
_UNCHECKED_TRIGGERS = ("dependency:", "chain:", "retry:")


def find_cycle(edges: Iterable[tuple[Any, Any]]) -> list[Any] | None:
    """A cycle in the directed graph of (upstream, downstream) edges, as a closed path, or None.

    Kahn's topological sort removes every node that can be ordered; whatever is left
    sits on or behind a cycle, and following edges inside that rest finds one.
    """
    successors: dict[Any, list[Any]] = defaultdict(list)
    indegree: dict[Any, int] = defaultdict(int)
    for upstream, downstream in edges:
        successors[upstream].append(downstream)
        indegree[downstream] += 1
        indegree.setdefault(upstream, 0)
    ready = deque(node for node, degree in indegree.items() if degree == 0)
    while ready:
        node = ready.popleft()
        for following in successors[node]:
            indegree[following] -= 1
            if indegree[following] == 0:
                ready.append(following)
        indegree[node] = -1
    rest = {node for node, degree in indegree.items() if degree > 0}
    if not rest:
        return None
    # Every remaining node has a predecessor in the rest; walk successors within it until a repeat.
    start = min(rest, key=str)
    path = [start]
    seen = {start: 0}
    node = start
    while True:
        node = next(following for following in successors[node] if following in rest)
        if node in seen:
            return [*path[seen[node] :], node]
        seen[node] = len(path)
        path.append(node)


def check_edge(upstream_id: Any, downstream_id: Any, *, exclude_edge_id: Any = None) -> None:
    """Refuse an edge that points at itself [E2006], exists already [E2007] or closes a cycle [E2005]."""
    if str(upstream_id) == str(downstream_id):
        raise SelfDependency("a job cannot depend on itself")
    others = JobDependency.objects.exclude(pk=exclude_edge_id) if exclude_edge_id else JobDependency.objects.all()
    if others.filter(upstream_job_id=upstream_id, downstream_job_id=downstream_id).exists():
        names = dict(Job.all_objects.filter(pk__in=[upstream_id, downstream_id]).values_list("pk", "name"))
        raise DuplicateDependency(
            f"'{names.get(downstream_id, downstream_id)}' already depends on '{names.get(upstream_id, upstream_id)}'"
        )
    edges = [(str(up), str(down)) for up, down in others.values_list("upstream_job_id", "downstream_job_id")]
    cycle = find_cycle([*edges, (str(upstream_id), str(downstream_id))])
    if cycle:
        names = {str(pk): name for pk, name in Job.all_objects.filter(pk__in=cycle).values_list("pk", "name")}
        route = " → ".join(f"'{names.get(node, node)}'" for node in cycle)
        raise DependencyCycle(f"this dependency would close a cycle: {route}")


def latest_finished(job_id: Any) -> JobExecution | None:
    """The upstream's latest finished run (ix_job_executions_job_finished)."""
    return (
        JobExecution.objects.filter(job_id=job_id, state__in=("completed", "failed", "cancelled"))
        .order_by("-completed_at")
        .first()
    )


def unmet_upstreams(job: Job) -> list[str]:
    """Why job may not start now: one line per upstream whose latest run does not allow it."""
    problems = []
    for edge in job.upstream_edges.select_related("upstream_job"):
        upstream = edge.upstream_job
        latest = latest_finished(upstream.pk)
        if latest is None:
            problems.append(f"upstream '{upstream.name}' has not run yet")
        elif latest.state == "completed" or (latest.state == "failed" and edge.run_on_failure):
            continue
        else:
            problems.append(
                f"upstream '{upstream.name}' last run {str(latest.pk)[:8]} {latest.state} "
                f"at {latest.completed_at:%Y-%m-%d %H:%M:%S} UTC"
            )
    return problems


def check_can_start(job: Job, triggered_by: str) -> None:
    """Refuse a manual, scheduled or monitor run of a job whose upstreams are not satisfied [E2008]."""
    if triggered_by.startswith(_UNCHECKED_TRIGGERS):
        return
    problems = unmet_upstreams(job)
    if problems:
        raise DependencyNotMet(
            f"job '{job.name}' waits for its upstream jobs: {'; '.join(problems)}. "
            "It starts by itself when they complete."
        )


def downstream_hook(execution: JobExecution, retried_by: JobExecution | None) -> None:
    """The engine's finish hook (jobs.engine.hooks): queue the downstream jobs, unless a retry
    takes the ended execution's place (dependants then wait for the retry's outcome)."""
    if retried_by is None:
        queue_downstream(execution)


def queue_downstream(execution: JobExecution) -> list[JobExecution]:
    """After an upstream run finished: queue each downstream job whose upstreams are now all satisfied.

    Runs in the transaction that ends the upstream execution, so the downstream run is
    queued exactly when the upstream's final state is committed.
    """
    if execution.state not in ("completed", "failed"):
        return []
    queued = []
    edges = JobDependency.objects.filter(upstream_job_id=execution.job_id).select_related("downstream_job")
    for edge in edges:
        downstream = edge.downstream_job
        if execution.state == "failed" and not edge.run_on_failure:
            continue
        if downstream.is_deleted or not downstream.is_enabled:
            continue
        problems = unmet_upstreams(downstream)
        if problems:
            AuditLogEntry.objects.record(
                entity_type="job",
                entity_id=downstream.pk,
                operation="dependency_waiting",
                details={"upstream_execution_id": str(execution.pk), "waiting_for": problems},
            )
            continue
        # Two upstreams finishing together should not queue the same downstream twice.
        if JobExecution.objects.filter(
            job_id=downstream.pk, state="queued", triggered_by__startswith="dependency:"
        ).exists():
            continue
        try:
            run = control.enqueue(
                downstream,
                triggered_by=f"dependency:{execution.pk}",
                context={
                    "trigger.upstream_job": execution.job.name,
                    "trigger.upstream_execution_id": str(execution.pk),
                    "trigger.upstream_state": execution.state,
                },
            )
        except CourierError as error:
            AuditLogEntry.objects.record(
                entity_type="job",
                entity_id=downstream.pk,
                operation="dependency_run_refused",
                details={"upstream_execution_id": str(execution.pk), "error": str(error)},
            )
            continue
        AuditLogEntry.objects.record(
            entity_type="job_dependency",
            entity_id=edge.pk,
            operation="triggered",
            details={
                "upstream_execution_id": str(execution.pk),
                "upstream_state": execution.state,
                "downstream_execution_id": str(run.pk),
            },
            event_type="DependencyTriggered",
        )
        queued.append(run)
    return queued
