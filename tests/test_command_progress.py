"""The progress line of run_job/run_chain --wait: a bar redrawn on a terminal, a line per change in a log."""

from __future__ import annotations

from io import StringIO

from django.core.management.base import OutputWrapper

from jobs.management.progress import ProgressLine, Status, step_figures


class Terminal(StringIO):
    def isatty(self) -> bool:
        return True


def test_figures_show_a_bar_the_share_done_and_the_rate() -> None:
    figures = step_figures(
        {"bytes_done": 256 * 1024 * 1024, "bytes_total": 1024 * 1024 * 1024, "rate_bytes_per_second": 50 * 1024**2}
    )
    assert figures == "[#####...............] 25% 256.0 MB of 1.0 GB 50.0 MB/s"


def test_figures_without_a_total_show_the_bytes_so_far() -> None:
    assert step_figures({"bytes_done": 2048, "bytes_total": None}) == "2.0 KB"
    assert step_figures(None) == ""


def test_a_log_gets_a_line_per_change_of_state_and_no_byte_counts() -> None:
    out = StringIO()
    line = ProgressLine(OutputWrapper(out))

    line.show(Status("queued"))
    line.show(Status("running · step 0 sftp.download", "[#...] 5%"))
    line.show(Status("running · step 0 sftp.download", "[##..] 10%"))
    line.show(Status("running · step 1 pgp.decrypt"))
    line.close()

    assert out.getvalue().splitlines() == ["queued", "running · step 0 sftp.download", "running · step 1 pgp.decrypt"]


def test_a_terminal_gets_one_line_redrawn_in_place_and_ended_on_close() -> None:
    out = Terminal()
    line = ProgressLine(OutputWrapper(out))

    line.show(Status("running · step 0 sftp.download", "[#...] 5%"))
    line.show(Status("running · step 0 sftp.download", "[##..] 10%"))
    line.close()

    drawn = out.getvalue()
    assert drawn.count("\r") == 2 and drawn.endswith("\n") and drawn.count("\n") == 1
    assert drawn.split("\r")[-1].rstrip() == "running · step 0 sftp.download [##..] 10%"
