"""Running executions in-process: context, checkpoints, failure policies, timeouts, control flow."""

from __future__ import annotations

import pytest

from audit.models import AuditLogEntry, DomainEvent
from jobs.engine import control, runner
from jobs.engine.workdirs import work_dir
from jobs.models import JobExecution
from tests.engine_support import CLEANUPS, FLAKY_ATTEMPTS, make_job, run_inline, step_rows

pytestmark = pytest.mark.django_db

RETRY_STEP = {"type": "retry_step", "max_retries": 2, "backoff_base_seconds": 0, "backoff_max_seconds": 0}


@pytest.fixture(autouse=True)
def data_dir(settings, tmp_path):
    settings.COURIER_DATA_DIR = tmp_path / "data"
    settings.COURIER_ALLOWED_ROOTS = [settings.COURIER_DATA_DIR]
    FLAKY_ATTEMPTS.clear()
    CLEANUPS.clear()
    return settings.COURIER_DATA_DIR


def test_steps_run_in_order_and_outputs_flow_through_context() -> None:
    job = make_job(
        [
            ("test.write", {"name": "a.txt", "text": "hello"}),
            ("test.write", {"name": "b.txt", "text": "context:0.text"}),
        ]
    )
    execution = run_inline(job)

    assert execution.state == "completed"
    values = execution.context_snapshot["values"]
    assert values["1.text"] == "hello"
    assert values["job.name"] == job.name
    assert [row.state for row in step_rows(execution)] == ["completed", "completed"]
    assert not work_dir(execution.pk).exists()  # removed when the execution ended


def test_alias_names_a_step_in_references() -> None:
    job = make_job(
        [
            ("test.write", {"name": "a.txt", "text": "v1"}),
            ("test.write", {"name": "b.txt", "text": "context:first.text"}),
        ],
        aliases={0: "first"},
    )
    assert run_inline(job).context_snapshot["values"]["1.text"] == "v1"


def test_every_transition_is_audited_with_a_domain_event() -> None:
    execution = run_inline(make_job([("test.write", {"name": "a.txt"})]))

    operations = list(
        AuditLogEntry.objects.filter(entity_type="job_execution", entity_id=execution.pk).values_list(
            "operation", flat=True
        )
    )
    assert sorted(operations) == ["completed", "queued", "running"]
    events = set(DomainEvent.objects.filter(entity_id=execution.pk).values_list("event_type", flat=True))
    assert events == {"JobQueued", "JobStarted", "JobCompleted"}
    row = step_rows(execution)[0]
    step_events = set(DomainEvent.objects.filter(entity_id=row.pk).values_list("event_type", flat=True))
    assert step_events == {"StepStarted", "StepCompleted"}


def test_stop_policy_fails_the_execution_at_the_first_failure() -> None:
    job = make_job([("test.flaky", {"key": "stop", "failures": 1}), ("test.write", {"name": "never.txt"})])
    execution = run_inline(job)

    assert execution.state == "failed"
    assert "flaky failure 1 of 1" in execution.error_message
    assert [row.state for row in step_rows(execution)] == ["failed"]


def test_retry_step_retries_with_one_row_per_attempt_then_succeeds() -> None:
    job = make_job([("test.flaky", {"key": "twice", "failures": 2})], policy=RETRY_STEP)
    execution = run_inline(job)

    assert execution.state == "completed"
    rows = step_rows(execution)
    assert [(row.retry_attempt, row.state) for row in rows] == [(0, "failed"), (1, "failed"), (2, "completed")]
    assert CLEANUPS == ["twice", "twice"]


def test_retry_step_retries_max_retries_times_then_fails() -> None:
    job = make_job([("test.flaky", {"key": "always", "failures": 99})], policy=RETRY_STEP)
    execution = run_inline(job)

    assert execution.state == "failed"
    assert [row.retry_attempt for row in step_rows(execution)] == [0, 1, 2]


def test_retry_job_fails_this_execution_and_queues_the_next_attempt() -> None:
    policy = {"type": "retry_job", "max_retries": 1, "backoff_base_seconds": 0, "backoff_max_seconds": 0}
    job = make_job([("test.flaky", {"key": "job", "failures": 5})], policy=policy)
    first = run_inline(job)

    assert first.state == "failed"
    retry = JobExecution.objects.get(retry_of_execution_id=first.pk)
    assert (retry.state, retry.triggered_by, retry.attempt) == ("queued", f"retry:{first.pk}", 2)

    assert control.claim(retry.pk, "inline-test")
    runner.ExecutionRunner(retry.pk, "inline-test").run()
    assert JobExecution.objects.get(pk=retry.pk).state == "failed"
    assert not JobExecution.objects.filter(retry_of_execution_id=retry.pk).exists()  # max_retries reached


def test_skip_and_continue_goes_on_but_does_not_call_the_run_a_success() -> None:
    policy = {"type": "skip_and_continue"}
    job = make_job(
        [("test.flaky", {"key": "skip", "failures": 1}), ("test.write", {"name": "after.txt"})], policy=policy
    )
    execution = run_inline(job)

    assert execution.state == "failed"
    assert "skipped" in execution.error_message and "step 0" in execution.error_message
    assert [row.state for row in step_rows(execution)] == ["failed", "skipped", "completed"]


def test_skip_and_continue_completes_when_nothing_failed() -> None:
    job = make_job([("test.write", {"name": "a.txt"})], policy={"type": "skip_and_continue"})
    assert run_inline(job).state == "completed"


def test_step_timeout_fails_with_e2030() -> None:
    job = make_job([("test.sleep", {"seconds": 5})], timeout=1)
    execution = run_inline(job)

    assert execution.state == "failed"
    assert "[E2030]" in execution.error_message and "timed out after 1 s" in execution.error_message


def test_step_that_ignores_the_timeout_is_abandoned_after_the_grace_period(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runner, "STOP_GRACE_SECONDS", 0.5)
    job = make_job([("test.stubborn", {"seconds": 4})], timeout=1)
    execution = run_inline(job)

    assert execution.state == "failed"
    assert "timed out after 1 s" in execution.error_message
    assert step_rows(execution)[0].duration_ms < 3000


def test_foreach_runs_its_body_per_item_with_iteration_rows() -> None:
    job = make_job(
        [
            ("flow.foreach", {"source": ["a", "b", "c"]}),
            ("test.write", {"name": "context:loop.current_item", "text": "context:loop.index"}),
            ("flow.end", {}),
        ]
    )
    execution = run_inline(job)

    assert execution.state == "completed"
    rows = step_rows(execution)
    assert [(row.step_order, row.iteration_index, row.position) for row in rows] == [
        (1, 0, "0[0].1"),
        (1, 1, "0[1].1"),
        (1, 2, "0[2].1"),
    ]


def test_nested_loops_and_if_see_inner_and_outer_values() -> None:
    job = make_job(
        [
            ("flow.foreach", {"source": [{"dir": "x", "files": ["1", "2"]}, {"dir": "y", "files": ["3"]}]}),
            ("flow.foreach", {"source": "context:loop.current_item.files"}),
            ("flow.if", {"left": "context:loop.current_item", "operator": "not_equals", "right": "2"}),
            ("test.write", {"name": "f.txt", "text": "context:loop.1.current_item.dir"}),
            ("flow.else", {}),
            ("test.write", {"name": "g.txt", "text": "else"}),
            ("flow.end", {}),
            ("flow.end", {}),
            ("flow.end", {}),
        ]
    )
    execution = run_inline(job)

    assert execution.state == "completed"
    rows = step_rows(execution)
    assert [(row.step_order, row.position, row.output_data["text"]) for row in rows] == [
        (3, "0[0].1[0].3", "x"),
        (5, "0[0].1[1].5", "else"),
        (3, "0[1].1[0].3", "y"),
    ]


def test_exists_is_false_for_a_key_the_context_does_not_hold() -> None:
    # A monitor.* key on a manual run, and the output of a step in a branch that did not run.
    job = make_job(
        [
            ("flow.if", {"left": "a", "operator": "equals", "right": "b"}),
            ("test.write", {"name": "never.txt"}),
            ("flow.end", {}),
            ("flow.if", {"left": "context:monitor.triggered_files", "operator": "exists"}),
            ("test.write", {"name": "monitor.txt", "text": "monitor"}),
            ("flow.else", {}),
            ("test.write", {"name": "manual.txt", "text": "manual"}),
            ("flow.end", {}),
            ("flow.if", {"left": "context:skipped.path", "operator": "exists"}),
            ("test.write", {"name": "ran.txt", "text": "ran"}),
            ("flow.else", {}),
            ("test.write", {"name": "not-ran.txt", "text": "not ran"}),
            ("flow.end", {}),
            ("flow.if", {"left": "context:manual.path", "operator": "exists"}),
            ("test.write", {"name": "seen.txt", "text": "seen"}),
            ("flow.end", {}),
        ],
        aliases={1: "skipped", 6: "manual"},
    )
    execution = run_inline(job)

    assert execution.state == "completed", execution.error_message
    assert [row.output_data["text"] for row in step_rows(execution)] == ["manual", "not ran", "seen"]


def test_a_missing_key_still_fails_a_comparison_with_its_name() -> None:
    job = make_job(
        [
            ("flow.if", {"left": "context:monitor.name", "operator": "equals", "right": "inbox"}),
            ("test.write", {"name": "x.txt"}),
            ("flow.end", {}),
        ]
    )
    execution = run_inline(job)

    assert execution.state == "failed"
    assert "[E2003]" in execution.error_message and "context:monitor.name" in execution.error_message


def test_empty_list_skips_the_loop_body() -> None:
    job = make_job([("flow.foreach", {"source": []}), ("test.write", {"name": "x"}), ("flow.end", {})])
    execution = run_inline(job)
    assert execution.state == "completed" and step_rows(execution) == []


@pytest.mark.parametrize(
    ("steps", "code"),
    [
        ([("sftp.teleport", {})], "E2001"),
        ([("test.write", {})], "E2002"),
        ([("test.write", {"name": "a", "colour": "red"})], "E2002"),
        ([("flow.foreach", {"source": []}), ("test.write", {"name": "a"})], "E2025"),
        ([("test.write", {"name": "context:7.path"})], "E2003"),
    ],
)
def test_bad_definitions_fail_before_the_first_step(steps: list, code: str) -> None:
    from jobs.models import Job, JobStep, JobVersion

    job = Job.objects.create(name=f"bad-{code}")
    for order, (type_key, configuration) in enumerate(steps):
        JobStep.objects.create(job=job, step_order=order, name="s", type_key=type_key, configuration=configuration)
    assert not JobVersion.objects.filter(job=job).exists()  # created by SQL/import: no version row yet

    execution = run_inline(job)

    assert execution.state == "failed"
    assert f"[{code}]" in execution.error_message
    assert step_rows(execution) == []
    assert JobVersion.objects.get(job=job, version_number=1).config_snapshot["steps"][0]["type_key"] == steps[0][0]


def test_execution_runs_the_version_it_was_queued_with() -> None:
    from jobs.definitions import record_version
    from jobs.engine.runner import ExecutionRunner

    job = make_job([("test.write", {"name": "a.txt", "text": "version one"})])
    execution = control.enqueue(job, triggered_by="manual:tester")
    step = job.steps.get()
    step.configuration = {"name": "a.txt", "text": "version two"}
    step.save()
    record_version(job, created_by="tester")

    assert control.claim(execution.pk, "inline-test")
    ExecutionRunner(execution.pk, "inline-test").run()
    finished = JobExecution.objects.get(pk=execution.pk)
    assert finished.job_version_number == 1
    assert finished.context_snapshot["values"]["0.text"] == "version one"


def test_retry_from_failed_step_keeps_completed_steps_and_reruns_the_failed_one() -> None:
    job = make_job(
        [("test.write", {"name": "kept.txt", "text": "once"}), ("test.flaky", {"key": "resume", "failures": 1})]
    )
    failed = run_inline(job)
    assert failed.state == "failed" and work_dir(failed.pk).exists()  # kept: resumable

    retry = control.retry_from_failed_step(failed.pk, by="tester")
    assert control.claim(retry.pk, "inline-test")
    runner.ExecutionRunner(retry.pk, "inline-test").run()

    finished = JobExecution.objects.get(pk=retry.pk)
    assert finished.state == "completed", finished.error_message
    assert [row.step_order for row in step_rows(finished)] == [1]  # step 0 was not run again


def test_resume_fails_fast_when_a_recorded_file_is_gone() -> None:
    job = make_job([("test.write", {"name": "kept.txt"}), ("test.flaky", {"key": "gone", "failures": 1})])
    failed = run_inline(job)
    (work_dir(failed.pk) / "kept.txt").unlink()

    retry = control.retry_from_failed_step(failed.pk, by="tester")
    assert control.claim(retry.pk, "inline-test")
    runner.ExecutionRunner(retry.pk, "inline-test").run()

    finished = JobExecution.objects.get(pk=retry.pk)
    assert finished.state == "failed" and "[E2015]" in finished.error_message
    assert step_rows(finished) == []


def test_cancel_of_a_queued_execution_is_immediate() -> None:
    job = make_job([("test.write", {"name": "a"})])
    execution = control.enqueue(job, triggered_by="manual:tester")

    control.request_cancel(execution.pk, by="tester")

    assert JobExecution.objects.get(pk=execution.pk).state == "cancelled"
    assert not control.claim(execution.pk, "inline-test")


def test_pausing_a_queued_execution_is_refused() -> None:
    from jobs.errors import IllegalTransition

    execution = control.enqueue(make_job([("test.write", {"name": "a"})]), triggered_by="manual:tester")
    with pytest.raises(IllegalTransition, match=r"\[E2010\]"):
        control.request_pause(execution.pk, by="tester")


def test_disabled_job_cannot_be_run() -> None:
    job = make_job([("test.write", {"name": "a"})])
    job.is_enabled = False
    job.save()
    with pytest.raises(control.JobNotRunnable, match=r"\[E2022\].*disabled"):
        control.enqueue(job, triggered_by="manual:tester")


def test_file_and_archive_steps_chain_through_context_references(data_dir) -> None:
    job = make_job(
        [
            ("test.write", {"name": "report.csv", "text": "id\n1\n"}),
            (
                "file.zip",
                {
                    "source_path": "context:0.path",
                    "output_path": "out/{date:%Y}/{execution_id}.zip",
                    "password": "zip-pass",
                },
            ),
            (
                "file.unzip",
                {"archive_path": "context:1.archive_path", "output_directory": "unpacked/", "password": "zip-pass"},
            ),
            (
                "file.copy",
                {"source_path": "context:2.extracted_files", "destination_path": str(data_dir / "outbound") + "/"},
            ),
        ]
    )
    execution = run_inline(job)

    assert execution.state == "completed", execution.error_message
    assert (data_dir / "outbound" / "report.csv").read_text() == "id\n1\n"
    archive_path = execution.context_snapshot["values"]["1.archive_path"]
    assert archive_path.endswith(f"{execution.pk}.zip")
    rows = step_rows(execution)
    assert [row.type_key for row in rows] == ["test.write", "file.zip", "file.unzip", "file.copy"]
    assert rows[1].bytes_processed > 0


def test_hostile_archive_fails_the_step_with_e7004(data_dir) -> None:
    from tests import archive_factory

    data_dir.mkdir(parents=True, exist_ok=True)
    archive = archive_factory.zip_with_names(data_dir / "slip.zip", ["../../evil.txt"])
    job = make_job([("file.unzip", {"archive_path": str(archive), "output_directory": "out/"})])
    execution = run_inline(job)

    assert execution.state == "failed"
    assert "[E7004]" in execution.error_message
    assert not (data_dir / "evil.txt").exists()


def test_daily_cleanup_removes_old_orphan_work_dirs_only(data_dir) -> None:
    import os
    import time as clock

    from jobs.engine.recovery import cleanup_orphan_work_dirs
    from jobs.engine.workdirs import work_root

    active = control.enqueue(make_job([("test.write", {"name": "a"})]), triggered_by="manual:tester")
    old_orphan, fresh_orphan, active_dir = work_root() / "old-orphan", work_root() / "fresh-orphan", work_dir(active.pk)
    for folder in (old_orphan, fresh_orphan, active_dir):
        folder.mkdir(parents=True)
    eight_days_ago = clock.time() - 8 * 86400
    for folder in (old_orphan, active_dir):
        os.utime(folder, (eight_days_ago, eight_days_ago))

    removed = cleanup_orphan_work_dirs()

    assert removed == ["old-orphan"]
    assert fresh_orphan.exists() and active_dir.exists()


def test_live_progress_and_heartbeat_are_recorded_while_a_step_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    from jobs.models import StepExecution

    monkeypatch.setattr(runner, "PROGRESS_SECONDS", 0.2)
    seen: list[dict] = []
    original = runner.ExecutionRunner._heartbeat

    def spy(self, row=None, context=None):
        original(self, row, context)
        if row is not None:
            progress = StepExecution.objects.get(pk=row.pk).progress
            if progress:
                seen.append(progress)

    monkeypatch.setattr(runner.ExecutionRunner, "_heartbeat", spy)
    execution = run_inline(make_job([("test.sleep", {"seconds": 1.0})]))

    assert execution.state == "completed"
    assert seen and seen[-1]["bytes_done"] > 0 and "rate_bytes_per_second" in seen[-1]
    assert step_rows(execution)[0].progress is None  # cleared once the step finished


@pytest.mark.parametrize(
    ("type_key", "configuration"),
    [
        ("file.move", {"source_path": "kept.txt", "destination_path": "outbox/"}),
        ("file.rename", {"path": "kept.txt", "new_name": "kept-2026-12-04.txt"}),
        ("file.delete", {"path": "kept.txt"}),
    ],
)
def test_resume_does_not_expect_a_file_a_later_step_moved_or_deleted(type_key, configuration) -> None:
    job = make_job(
        [
            ("test.write", {"name": "kept.txt", "text": "invoice"}),
            (type_key, configuration),
            ("test.flaky", {"key": f"moved-{type_key}", "failures": 1}),
        ]
    )
    failed = run_inline(job)
    assert failed.state == "failed" and "[E2015]" not in (failed.error_message or "")
    assert not (work_dir(failed.pk) / "kept.txt").exists()

    retry = control.retry_from_failed_step(failed.pk, by="tester")
    assert control.claim(retry.pk, "inline-test")
    runner.ExecutionRunner(retry.pk, "inline-test").run()

    finished = JobExecution.objects.get(pk=retry.pk)
    assert finished.state == "completed", finished.error_message
    assert [row.step_order for row in step_rows(finished)] == [2]


def test_resume_still_fails_fast_when_the_moved_file_itself_is_gone() -> None:
    job = make_job(
        [
            ("test.write", {"name": "kept.txt"}),
            ("file.move", {"source_path": "kept.txt", "destination_path": "outbox/"}),
            ("test.flaky", {"key": "moved-gone", "failures": 1}),
        ]
    )
    failed = run_inline(job)
    (work_dir(failed.pk) / "outbox" / "kept.txt").unlink()

    retry = control.retry_from_failed_step(failed.pk, by="tester")
    assert control.claim(retry.pk, "inline-test")
    runner.ExecutionRunner(retry.pk, "inline-test").run()

    finished = JobExecution.objects.get(pk=retry.pk)
    assert finished.state == "failed" and "[E2015]" in finished.error_message and "outbox" in finished.error_message


def test_pause_resume_and_cancel_each_write_their_own_domain_event() -> None:
    execution = control.enqueue(make_job([("test.write", {"name": "a"})]), triggered_by="manual:tester")
    assert control.claim(execution.pk, "inline-test")
    control.transition(execution.pk, "paused", by="tester")
    control.resume(execution.pk, by="tester")
    assert control.claim(execution.pk, "inline-test")
    control.transition(execution.pk, "paused", by="tester")
    control.request_cancel(execution.pk, by="tester")

    # One transaction here, so one timestamp: compared as a multiset.
    events = DomainEvent.objects.filter(entity_id=execution.pk).values_list("event_type", flat=True)
    assert sorted(events) == sorted(
        ["JobQueued", "JobStarted", "JobPaused", "JobResumed", "JobStarted", "JobPaused", "JobCancelled"]
    )
    operations = AuditLogEntry.objects.filter(entity_type="job_execution", entity_id=execution.pk)
    assert operations.filter(operation="queued", details__from="paused").count() == 1


def test_cancel_of_a_paused_execution_is_immediate_and_removes_its_work_dir(
    django_capture_on_commit_callbacks,
) -> None:
    execution = control.enqueue(make_job([("test.write", {"name": "a"})]), triggered_by="manual:tester")
    assert control.claim(execution.pk, "inline-test")
    work_dir(execution.pk).mkdir(parents=True)
    (work_dir(execution.pk) / "half-done.csv").write_text("kept while paused")
    control.transition(execution.pk, "paused", by="tester")

    with django_capture_on_commit_callbacks(execute=True):
        control.request_cancel(execution.pk, by="olivia")

    cancelled = JobExecution.objects.get(pk=execution.pk)
    assert (cancelled.state, cancelled.error_message) == ("cancelled", "cancelled by olivia")
    assert cancelled.completed_at is not None and cancelled.control_request is None
    assert not work_dir(execution.pk).exists()
    assert not control.claim(execution.pk, "inline-test")
