"""file.zip / file.unzip: every format round trip, passwords, split parts, and hostile archives [E7004]."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from jobs.errors import ArchiveError, HostileArchive, StepFailed
from jobs.steps import archive_guard
from jobs.steps.archive import UnzipStep, ZipStep
from tests import archive_factory
from tests.step_support import make_context
from tests.test_pgp_steps import cancel_once_streaming, sparse_file


@pytest.fixture
def context(tmp_path: Path):
    ctx = make_context(tmp_path)
    source = ctx.work_dir / "src"
    (source / "nested").mkdir(parents=True)
    (source / "invoice.csv").write_text("id,amount\n1,10\n" * 200)
    (source / "nested" / "notes.txt").write_text("hello")
    return ctx


def build(context, **config):
    step = ZipStep()
    config = step.with_defaults(config)
    assert step.validate(config) == []
    return step.execute(config, context, context.cancel)


def extract(context, **config):
    step = UnzipStep()
    config = step.with_defaults(config)
    assert step.validate(config) == []
    return step.execute(config, context, context.cancel)


def contents(folder: Path) -> dict[str, str]:
    return {str(path.relative_to(folder)): path.read_text() for path in sorted(folder.rglob("*")) if path.is_file()}


@pytest.mark.parametrize(
    ("archive_format", "password"),
    [("zip", None), ("zip", "s3cret!"), ("tar", None), ("tar.gz", None), ("7z", None), ("7z", "s3cret!")],
)
def test_round_trip(context, archive_format: str, password: str | None) -> None:
    built = build(
        context, source_path="src", output_path=f"out/bundle.{archive_format}", format=archive_format, password=password
    )
    result = extract(
        context, archive_path=built.outputs["archive_path"], output_directory="unpacked", password=password
    )

    assert contents(context.work_dir / "unpacked") == {
        "src/invoice.csv": "id,amount\n1,10\n" * 200,
        "src/nested/notes.txt": "hello",
    }
    assert len(result.outputs["extracted_files"]) == 2
    assert not list(context.work_dir.glob(".courier-build-*"))


def test_gzip_round_trip_of_one_file(context) -> None:
    built = build(context, source_path="src/invoice.csv", output_path="invoice.csv.gz", format="gzip")
    extract(context, archive_path=built.outputs["archive_path"], output_directory="plain")
    assert (context.work_dir / "plain" / "invoice.csv").read_text().startswith("id,amount")


def test_gzip_refuses_several_files(context) -> None:
    with pytest.raises(StepFailed, match="gzip packs exactly one file"):
        build(context, source_path="src", output_path="x.gz", format="gzip")


def test_aes_zip_is_really_encrypted_with_aes(context) -> None:
    import zipfile

    built = build(context, source_path="src/invoice.csv", output_path="secret.zip", password="pw")
    with zipfile.ZipFile(built.outputs["archive_path"]) as bundle:
        info = bundle.infolist()[0]
        assert info.flag_bits & 0x1  # encrypted
        assert info.compress_type == 99  # WinZip AES method, which the standard library cannot read
        with pytest.raises(NotImplementedError):
            bundle.read(info, pwd=b"pw")


@pytest.mark.parametrize("archive_format", ["zip", "7z"])
def test_wrong_password_fails_cleanly(context, archive_format: str) -> None:
    built = build(
        context, source_path="src", output_path=f"s.{archive_format}", format=archive_format, password="right"
    )
    with pytest.raises(ArchiveError, match=r"\[E7001\].*wrong password"):
        extract(context, archive_path=built.outputs["archive_path"], output_directory="out", password="wrong")
    assert not list((context.work_dir / "out").rglob("*.csv"))


def test_password_on_tar_is_refused_by_validation() -> None:
    problems = ZipStep().validate({"source_path": "a", "output_path": "b.tar", "format": "tar", "password": "x"})
    assert any("only works with zip and 7z" in problem for problem in problems)


def test_split_zip_round_trip(context) -> None:
    big = context.work_dir / "src" / "big.bin"
    big.write_bytes(os.urandom(3 * 1024 * 1024))
    built = build(context, source_path="src/big.bin", output_path="parts/big.zip", split_max_size_mb=1)

    parts = built.outputs["parts"]
    assert [Path(part).name for part in parts] == ["big.zip.001", "big.zip.002", "big.zip.003", "big.zip.004"]
    extract(context, archive_path=parts[0], output_directory="joined")
    assert (context.work_dir / "joined" / "big.bin").read_bytes() == big.read_bytes()


def test_cleanup_before_retry_removes_a_partial_build(context) -> None:
    partial = context.work_dir / ".courier-build-abc"
    partial.write_bytes(b"half an archive")
    ZipStep().cleanup_before_retry({}, context)
    assert not partial.exists()


def test_cleanup_before_retry_removes_a_half_copied_archive_and_parts_beside_the_target(context) -> None:
    outbox = context.work_dir.parent.parent / "outbox"
    outbox.mkdir()
    leftovers = [outbox / ".daily.zip.courier-tmp", outbox / ".daily.zip.002.courier-tmp"]
    for path in [*leftovers, outbox / "daily.zip.001", outbox / ".other.zip.courier-tmp"]:
        path.write_bytes(b"data")
    ZipStep().cleanup_before_retry({"output_path": str(outbox / "daily.zip")}, context)
    assert sorted(path.name for path in outbox.iterdir()) == [".other.zip.courier-tmp", "daily.zip.001"]


@pytest.mark.parametrize("name", ["../evil.txt", "/abs/evil.txt", "a/../../evil.txt", "C:\\evil.txt", "..\\evil.txt"])
def test_zip_slip_names_are_refused_and_nothing_is_written(context, tmp_path: Path, name: str) -> None:
    archive = archive_factory.zip_with_names(context.work_dir / "slip.zip", ["fine.txt", name])
    with pytest.raises(HostileArchive, match=r"\[E7004\]"):
        extract(context, archive_path=str(archive), output_directory="out")
    assert list((context.work_dir / "out").iterdir()) == []
    assert not (tmp_path / "data" / "work" / "evil.txt").exists()


def test_tar_slip_is_refused(context) -> None:
    archive = archive_factory.tar_with_names(context.work_dir / "slip.tar", ["ok.txt", "../../evil.txt"])
    with pytest.raises(HostileArchive, match="climbs out"):
        extract(context, archive_path=str(archive), output_directory="out")
    assert list((context.work_dir / "out").iterdir()) == []


def test_symlink_in_zip_is_refused(context) -> None:
    archive = archive_factory.zip_with_symlink(context.work_dir / "link.zip", "passwd", "/etc/passwd")
    with pytest.raises(HostileArchive, match="symbolic link"):
        extract(context, archive_path=str(archive), output_directory="out")


@pytest.mark.parametrize("hard", [False, True])
def test_links_in_tar_are_refused(context, hard: bool) -> None:
    archive = archive_factory.tar_with_link(context.work_dir / "link.tar", "shadow", "/etc/shadow", hard=hard)
    with pytest.raises(HostileArchive, match="is a link"):
        extract(context, archive_path=str(archive), output_directory="out")
    assert list((context.work_dir / "out").iterdir()) == []


def test_compression_bomb_is_stopped_mid_stream(context) -> None:
    archive = archive_factory.zip_bomb(context.work_dir / "bomb.zip", megabytes=30)
    assert archive.stat().st_size < 100_000  # about 1000:1
    with pytest.raises(HostileArchive, match="expands more than 200:1"):
        extract(context, archive_path=str(archive), output_directory="out")
    assert list((context.work_dir / "out").iterdir()) == []


def test_too_many_entries_are_refused(context, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(archive_guard, "MAX_ENTRIES", 10)
    archive = archive_factory.zip_with_entries(context.work_dir / "many.zip", 11)
    with pytest.raises(HostileArchive, match="more than 10 entries"):
        extract(context, archive_path=str(archive), output_directory="out")


def test_entry_larger_than_the_limit_is_refused(context, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(archive_guard, "MAX_ENTRY_BYTES", 1000)
    built = build(context, source_path="src/invoice.csv", output_path="one.zip")
    with pytest.raises(HostileArchive, match="larger than the 1000 bytes"):
        extract(context, archive_path=built.outputs["archive_path"], output_directory="out")


def test_total_size_limit_is_enforced(context, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(archive_guard, "MAX_TOTAL_BYTES", 2000)
    built = build(context, source_path="src", output_path="all.tar", format="tar")
    with pytest.raises(HostileArchive, match="more than the 2000 bytes allowed in total"):
        extract(context, archive_path=built.outputs["archive_path"], output_directory="out")


def test_7z_limits_are_enforced_while_decompressing(context, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(archive_guard, "MAX_ENTRY_BYTES", 1000)
    built = build(context, source_path="src/invoice.csv", output_path="one.7z", format="7z")
    with pytest.raises(HostileArchive):
        extract(context, archive_path=built.outputs["archive_path"], output_directory="out")
    assert not (context.work_dir / "out" / "invoice.csv").exists()


def test_corrupt_archive_fails_with_e7001(context) -> None:
    broken = context.work_dir / "broken.zip"
    broken.write_bytes(b"PK\x03\x04" + os.urandom(200))
    with pytest.raises(ArchiveError, match=r"\[E7001\]"):
        extract(context, archive_path=str(broken), output_directory="out")


@pytest.mark.parametrize("password", [None, "s3cret!"], ids=["7z", "7z-encrypted"])
def test_cancel_while_one_large_file_goes_into_a_7z_stops_within_a_second(
    context, tmp_path: Path, password: str | None
) -> None:
    size = 1024 * 1024 * 1024
    sparse_file(context.work_dir / "src" / "large.bin", size)
    step = ZipStep()
    config = step.with_defaults(
        {"source_path": "src/large.bin", "output_path": "out/large.7z", "format": "7z", "password": password}
    )

    seconds_to_stop, _ = cancel_once_streaming(step, config, context, context.work_dir / "out" / "large.7z")

    assert seconds_to_stop < 1.0
    assert 32 * 1024 * 1024 <= context.progress.bytes_done < size // 2  # progress moved within the file
    out = context.work_dir / "out"
    assert not out.exists() or list(out.iterdir()) == []  # no archive, no half-built file
    assert sorted(path.name for path in context.work_dir.iterdir()) == ["src"]
