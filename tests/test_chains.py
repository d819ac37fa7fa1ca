"""Chains: entry points queued together, propagation, skips, run on upstream failure, cancel, outputs."""

from __future__ import annotations

from typing import Any

import pytest
from django.core.management import CommandError, call_command

from audit.models import AuditLogEntry, DomainEvent
from jobs import chains
from jobs.engine import control
from jobs.engine.runner import ExecutionRunner
from jobs.models import ChainExecution, JobChain, JobChainMember, JobExecution
from tests.engine_support import FLAKY_ATTEMPTS, make_job

pytestmark = pytest.mark.django_db

OK = [("test.write", {"name": "out.txt", "text": "done"})]
FAIL = [("test.flaky", {"key": "chain-fail", "failures": 99})]


@pytest.fixture(autouse=True)
def data_dir(settings, tmp_path):
    settings.COURIER_DATA_DIR = tmp_path / "data"
    settings.COURIER_ALLOWED_ROOTS = [settings.COURIER_DATA_DIR]
    FLAKY_ATTEMPTS.clear()
    return settings.COURIER_DATA_DIR


def make_chain(members: list[tuple[int, Any, int | None, bool]], name: str = "Nightly chain") -> JobChain:
    """members: (order, job, runs after order, run_on_upstream_failure)."""
    chain = JobChain.objects.create(name=name)
    created = {}
    for order, job, _, on_failure in members:
        created[order] = JobChainMember.objects.create(
            chain=chain, job=job, execution_order=order, run_on_upstream_failure=on_failure
        )
    for order, _, after, _ in members:
        if after is not None:
            created[order].depends_on_member = created[after]
            created[order].save()
    return chain


def queued_members(execution: ChainExecution) -> list[JobExecution]:
    return list(JobExecution.objects.filter(chain_execution_id=execution.pk, state="queued").order_by("queued_at"))


def run_queued(execution: ChainExecution) -> list[str]:
    """Run the chain's queued member executions in this process, as workers would; returns job names run."""
    ran = []
    for job_execution in queued_members(execution):
        assert control.claim(job_execution.pk, "inline-test")
        ExecutionRunner(job_execution.pk, "inline-test").run()
        ran.append(job_execution.job.name)
    return ran


def drain(execution: ChainExecution) -> ChainExecution:
    while run_queued(execution):
        pass
    return ChainExecution.objects.get(pk=execution.pk)


def member_states(execution: ChainExecution) -> dict[int, str]:
    return dict(execution.member_runs.values_list("execution_order", "state"))


def test_entry_points_are_queued_together_and_dependants_follow_completion() -> None:
    extract, load, report = make_job(OK, name="extract"), make_job(OK, name="load"), make_job(OK, name="report")
    other_entry = make_job(OK, name="other entry")
    chain = make_chain(
        [(0, extract, None, False), (1, other_entry, None, False), (2, load, 0, False), (3, report, 2, False)]
    )

    execution = chains.trigger(chain, triggered_by="manual:tester")

    assert sorted(job_execution.job.name for job_execution in queued_members(execution)) == ["extract", "other entry"]
    assert run_queued(execution) == ["extract", "other entry"]
    assert [e.job.name for e in queued_members(execution)] == ["load"]
    execution = drain(execution)
    assert execution.state == "completed"
    assert member_states(execution) == {0: "completed", 1: "completed", 2: "completed", 3: "completed"}
    runs = JobExecution.objects.filter(chain_execution_id=execution.pk)
    assert runs.count() == 4
    assert {run.triggered_by for run in runs} == {f"chain:{execution.pk}"}


def test_a_failed_member_skips_its_descendants_and_fails_the_chain() -> None:
    first, second, third = make_job(FAIL, name="fetch"), make_job(OK, name="decrypt"), make_job(OK, name="upload")
    independent = make_job(OK, name="independent")
    chain = make_chain(
        [(0, first, None, False), (1, second, 0, False), (2, third, 1, False), (3, independent, None, False)]
    )

    execution = drain(chains.trigger(chain, triggered_by="manual:tester"))

    assert execution.state == "failed"
    assert member_states(execution) == {0: "failed", 1: "skipped", 2: "skipped", 3: "completed"}
    assert not JobExecution.objects.filter(chain_execution_id=execution.pk, job=second).exists()
    assert "member 0 failed" in execution.error_message
    assert DomainEvent.objects.filter(entity_id=execution.pk, event_type="ChainFailed").count() == 1


def test_run_on_upstream_failure_runs_the_member_anyway_but_the_chain_still_fails() -> None:
    fetch, alert, archive = make_job(FAIL, name="fetch"), make_job(OK, name="alert"), make_job(OK, name="archive")
    chain = make_chain([(0, fetch, None, False), (1, alert, 0, True), (2, archive, 0, False)])

    execution = drain(chains.trigger(chain, triggered_by="manual:tester"))

    assert member_states(execution) == {0: "failed", 1: "completed", 2: "skipped"}
    assert execution.state == "failed"


def test_chain_events_are_written_for_start_and_completion() -> None:
    chain = make_chain([(0, make_job(OK), None, False)])

    execution = drain(chains.trigger(chain, triggered_by="manual:tester"))

    events = list(DomainEvent.objects.filter(entity_id=execution.pk).values_list("event_type", flat=True))
    assert sorted(events) == ["ChainCompleted", "ChainStarted"]


def test_cancel_skips_pending_members_and_cancels_queued_ones() -> None:
    first, second = make_job(OK, name="first"), make_job(OK, name="second")
    chain = make_chain([(0, first, None, False), (1, second, 0, False)])
    execution = chains.trigger(chain, triggered_by="manual:tester")
    queued = queued_members(execution)

    chains.cancel(execution.pk, by="tester")

    execution.refresh_from_db()
    assert execution.state == "cancelled"
    assert JobExecution.objects.get(pk=queued[0].pk).state == "cancelled"
    assert member_states(execution) == {0: "cancelled", 1: "skipped"}
    assert AuditLogEntry.objects.filter(entity_id=execution.pk, operation="cancelled", performed_by="tester").exists()
    with pytest.raises(chains.IllegalTransition, match="E2010"):
        chains.cancel(execution.pk, by="tester")


def test_a_disabled_chain_cannot_be_triggered() -> None:
    chain = make_chain([(0, make_job(OK), None, False)])
    chain.is_enabled = False
    chain.save()

    with pytest.raises(chains.ChainDisabled, match=r"\[E2020\].*disabled"):
        chains.trigger(chain, triggered_by="manual:tester")
    assert not ChainExecution.objects.filter(chain=chain).exists()


def test_a_deleted_member_job_blocks_the_trigger() -> None:
    doomed = make_job(OK, name="doomed")
    chain = make_chain([(0, make_job(OK), None, False), (1, doomed, 0, False)])
    doomed.delete()

    with pytest.raises(chains.ChainMemberUnavailable, match=r"\[E2021\].*doomed.*deleted"):
        chains.trigger(chain, triggered_by="manual:tester")
    assert not JobExecution.objects.filter(triggered_by__startswith="chain:").exists()


def test_member_definitions_with_cycles_duplicates_or_dangling_references_are_refused() -> None:
    spec = chains.MemberSpec
    with pytest.raises(chains.InvalidChainDefinition, match=r"E2024.*cycle"):
        chains.check_members([spec(0, "a", 2), spec(1, "b", 0), spec(2, "c", 1)])
    with pytest.raises(chains.InvalidChainDefinition, match=r"E2024.*order 1"):
        chains.check_members([spec(0, "a"), spec(1, "b"), spec(1, "c")])
    with pytest.raises(chains.InvalidChainDefinition, match=r"E2024.*member 7"):
        chains.check_members([spec(0, "a", 7)])
    with pytest.raises(chains.InvalidChainDefinition, match=r"E2024.*itself"):
        chains.check_members([spec(0, "a", 0)])
    chains.check_members([spec(0, "a"), spec(1, "b", 0), spec(2, "c", 0)])


def test_a_member_reads_the_previous_members_outputs_through_chain_keys() -> None:
    producer = make_job([("test.write", {"name": "a.txt", "text": "invoice-42"})], name="producer")
    consumer = make_job([("test.write", {"name": "b.txt", "text": "context:chain.0.0.text"})], name="consumer")
    chain = make_chain([(0, producer, None, False), (1, consumer, 0, False)])

    execution = drain(chains.trigger(chain, triggered_by="manual:tester"))

    assert execution.state == "completed"
    consumer_run = JobExecution.objects.get(chain_execution_id=execution.pk, job=consumer)
    values = consumer_run.context_snapshot["values"]
    assert values["chain.0.0.text"] == "invoice-42"
    assert values["0.text"] == "invoice-42"
    assert values["chain.execution_id"] == str(execution.pk)


def test_a_member_retried_by_its_job_policy_is_followed_to_the_retry() -> None:
    flaky = make_job(
        [("test.flaky", {"key": "retry-member", "failures": 1})],
        name="flaky",
        policy={"type": "retry_job", "max_retries": 2, "backoff_base_seconds": 0, "backoff_max_seconds": 0},
    )
    after = make_job(OK, name="after")
    chain = make_chain([(0, flaky, None, False), (1, after, 0, False)])

    execution = drain(chains.trigger(chain, triggered_by="manual:tester"))

    assert execution.state == "completed"
    assert member_states(execution) == {0: "completed", 1: "completed"}
    runs = JobExecution.objects.filter(chain_execution_id=execution.pk, job=flaky).order_by("attempt")
    assert [run.state for run in runs] == ["failed", "completed"]


def test_reconcile_moves_on_a_chain_whose_member_ended_unnoticed() -> None:
    first, second = make_job(OK, name="first"), make_job(OK, name="second")
    chain = make_chain([(0, first, None, False), (1, second, 0, False)])
    execution = chains.trigger(chain, triggered_by="manual:tester")
    job_execution = queued_members(execution)[0]
    # The member's run ends without the propagation (as if its process died right after).
    control.claim(job_execution.pk, "inline-test")
    control.transition(job_execution.pk, "completed", followups=False)

    chains.reconcile()

    assert member_states(execution)[0] == "completed"
    assert [e.job.name for e in queued_members(execution)] == ["second"]


def test_run_chain_command_waits_and_exits_non_zero_on_failure(capsys) -> None:
    make_chain([(0, make_job(FAIL, name="fails"), None, False)], name="Failing chain")

    with pytest.raises(CommandError, match="no chain named"):
        call_command("run_chain", "Nope")
    call_command("run_chain", "Failing chain", "--json")
    assert '"state": "running"' in capsys.readouterr().out


def test_the_demo_chain_packages_then_archives_the_inbox(data_dir) -> None:
    call_command("load_demo")
    chain = JobChain.objects.get(name="Demo: nightly partner run")
    assert chain.schedules.get().next_fire_at is not None

    execution = drain(chains.trigger(chain, triggered_by="manual:tester"))

    assert execution.state == "completed", execution.error_message
    archived = list((data_dir / "demo" / "archive").glob("inbox-*.zip"))
    assert len(archived) == 1
    assert list((data_dir / "demo" / "outbound").glob("*.zip")) == []
