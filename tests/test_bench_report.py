"""The benchmarks' report: ratios against the anchor, targets met or missed, and what it prints."""

from __future__ import annotations

import pytest

from bench.support import Figure, Report


def test_a_rate_is_compared_with_its_anchor_and_both_targets() -> None:
    figure = Figure("download", 800.0, "MiB/s", "sftp", 1000.0, target_ratio=0.8, target_absolute=500)
    assert figure.ratio == pytest.approx(0.8)
    assert figure.met
    assert not Figure("download", 790.0, "MiB/s", "sftp", 1000.0, target_ratio=0.8).met
    assert not Figure("download", 800.0, "MiB/s", "sftp", 1000.0, target_ratio=0.8, target_absolute=900).met


def test_a_latency_is_better_when_lower() -> None:
    figure = Figure("p95", 0.05, "s", "poller", 5.0, target_absolute=0.5, higher_is_better=False)
    assert figure.ratio == pytest.approx(100.0)
    assert figure.met
    assert not Figure("p95", 0.6, "s", "poller", 5.0, target_absolute=0.5, higher_is_better=False).met


def test_a_report_misses_when_any_figure_misses_and_says_which(capsys: pytest.CaptureFixture[str]) -> None:
    report = Report(
        "writes",
        [
            Figure("batched", 4000.0, "records/s", "ORM", 700.0, target_absolute=2000),
            Figure("one each", 1400.0, "records/s", "commit floor", 1800.0),
            Figure("slow", 100.0, "records/s", "ORM", 700.0, target_absolute=2000),
        ],
        ["a note"],
    )
    assert not report.met
    report.print()
    lines = capsys.readouterr().out.splitlines()
    assert lines[1] == "== writes"
    assert lines[2].endswith("target >= 2000 records/s: MET")
    assert lines[3].endswith("ratio 0.78x | no target")
    assert lines[4].endswith("NOT MET")
    assert lines[5] == "  note: a note"
    assert Report("fine", [Figure("one each", 1.0, "records/s", "floor", 2.0)]).met
