"""Job dependencies: edge checks (E2005 to E2007), downstream runs on completion, refusal of unmet upstreams."""

from __future__ import annotations

import pytest

from audit.models import AuditLogEntry, DomainEvent
from jobs import dependencies
from jobs.engine import control
from jobs.engine.runner import ExecutionRunner
from jobs.models import JobDependency, JobExecution
from tests.engine_support import FLAKY_ATTEMPTS, make_job, run_inline

pytestmark = pytest.mark.django_db

OK = [("test.write", {"name": "out.txt", "text": "done"})]
FAIL = [("test.flaky", {"key": "dep-fail", "failures": 99})]


@pytest.fixture(autouse=True)
def data_dir(settings, tmp_path):
    settings.COURIER_DATA_DIR = tmp_path / "data"
    settings.COURIER_ALLOWED_ROOTS = [settings.COURIER_DATA_DIR]
    FLAKY_ATTEMPTS.clear()
    return settings.COURIER_DATA_DIR


def depend(upstream, downstream, run_on_failure: bool = False) -> JobDependency:
    dependencies.check_edge(upstream.pk, downstream.pk)
    return JobDependency.objects.create(upstream_job=upstream, downstream_job=downstream, run_on_failure=run_on_failure)


def queued_runs(job) -> list[JobExecution]:
    return list(JobExecution.objects.filter(job=job, state="queued"))


def run(execution: JobExecution) -> JobExecution:
    assert control.claim(execution.pk, "inline-test")
    ExecutionRunner(execution.pk, "inline-test").run()
    return JobExecution.objects.get(pk=execution.pk)


def test_find_cycle_reports_the_closed_path_or_none() -> None:
    assert dependencies.find_cycle([("a", "b"), ("b", "c")]) is None
    cycle = dependencies.find_cycle([("a", "b"), ("b", "c"), ("c", "a"), ("c", "d")])
    assert cycle is not None and cycle[0] == cycle[-1] and set(cycle) == {"a", "b", "c"}


def test_an_edge_closing_a_cycle_is_refused_with_the_route() -> None:
    first, second, third = make_job(OK, name="first"), make_job(OK, name="second"), make_job(OK, name="third")
    depend(first, second)
    depend(second, third)

    with pytest.raises(dependencies.DependencyCycle, match=r"\[E2005\].*'third' → 'first'"):
        dependencies.check_edge(third.pk, first.pk)


def test_self_and_duplicate_edges_are_refused() -> None:
    first, second = make_job(OK, name="first"), make_job(OK, name="second")
    depend(first, second)

    with pytest.raises(dependencies.SelfDependency, match="E2006"):
        dependencies.check_edge(first.pk, first.pk)
    with pytest.raises(dependencies.DuplicateDependency, match=r"\[E2007\] 'second' already depends on 'first'"):
        dependencies.check_edge(first.pk, second.pk)


def test_a_completed_upstream_queues_its_downstream() -> None:
    upstream, downstream = make_job(OK, name="fetch"), make_job(OK, name="process")
    edge = depend(upstream, downstream)

    finished = run_inline(upstream)

    [triggered] = queued_runs(downstream)
    assert triggered.triggered_by == f"dependency:{finished.pk}"
    assert triggered.context_snapshot["values"]["trigger.upstream_execution_id"] == str(finished.pk)
    assert DomainEvent.objects.filter(entity_id=edge.pk, event_type="DependencyTriggered").exists()


def test_a_failed_upstream_queues_only_downstreams_that_run_on_failure() -> None:
    upstream = make_job(FAIL, name="fetch")
    cleanup, process = make_job(OK, name="cleanup"), make_job(OK, name="process")
    depend(upstream, cleanup, run_on_failure=True)
    depend(upstream, process)

    run_inline(upstream)

    assert len(queued_runs(cleanup)) == 1
    assert queued_runs(process) == []


def test_a_downstream_with_two_upstreams_waits_for_both() -> None:
    left, right, joined = make_job(OK, name="left"), make_job(OK, name="right"), make_job(OK, name="joined")
    depend(left, joined)
    depend(right, joined)

    run_inline(left)
    assert queued_runs(joined) == []
    assert AuditLogEntry.objects.filter(entity_id=joined.pk, operation="dependency_waiting").exists()

    run_inline(right)
    assert len(queued_runs(joined)) == 1


def test_a_manual_run_of_a_downstream_whose_upstream_failed_is_refused() -> None:
    upstream, downstream = make_job(FAIL, name="fetch"), make_job(OK, name="process")
    depend(upstream, downstream)
    run_inline(upstream)

    with pytest.raises(dependencies.DependencyNotMet, match=r"\[E2008\].*'process' waits.*'fetch'.*failed"):
        control.enqueue(downstream, triggered_by="manual:tester")


def test_a_manual_run_is_allowed_once_the_upstream_completed() -> None:
    upstream, downstream = make_job(OK, name="fetch"), make_job(OK, name="process")
    depend(upstream, downstream)
    with pytest.raises(dependencies.DependencyNotMet, match="has not run yet"):
        control.enqueue(downstream, triggered_by="manual:tester")

    run_inline(upstream)
    JobExecution.objects.filter(job=downstream).update(state="cancelled")

    assert control.enqueue(downstream, triggered_by="manual:tester").state == "queued"


def test_a_downstream_run_triggered_by_dependency_runs_to_completion() -> None:
    upstream, downstream = make_job(OK, name="fetch"), make_job(OK, name="process")
    depend(upstream, downstream)
    run_inline(upstream)

    [triggered] = queued_runs(downstream)
    assert run(triggered).state == "completed"
