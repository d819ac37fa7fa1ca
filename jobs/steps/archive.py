"""Archive steps: file.zip builds zip (AES-256), tar, tar.gz, gzip and 7z archives; file.unzip extracts them safely.

Split zips are written as plain byte slices `<archive>.zip.001`, `.002` … (the scheme
7-Zip and `cat` understand); file.unzip given the `.001` part joins the parts back.
Link entries (symlinks, hardlinks) and device files are refused outright: a partner
file drop has no business shipping them, and refusing is simpler to trust than
checking where each one points.
"""

from __future__ import annotations

import contextlib
import glob
import gzip
import os
import shutil
import stat
import tarfile
import uuid
import zipfile
import zlib
from pathlib import Path
from typing import Any

import py7zr
import pyzipper
from py7zr.io import Py7zIO, WriterFactory

from jobs.diskfull import is_disk_full, reporting_disk_full
from jobs.errors import ArchiveError, HostileArchive, StepFailed
from jobs.paths import resolve_path
from jobs.steps import archive_guard as guard
from jobs.steps.base import CancelToken, ConfigField, StepContext, StepResult, StepType, as_list, iter_chunks, register
from jobs.steps.files import select_sources

FORMATS = ("zip", "tar", "tar.gz", "gzip", "7z")
BUILD_PREFIX = ".courier-build-"
EXTRACT_PREFIX = ".courier-extract-"


def _collect(sources: list[Path]) -> list[tuple[Path, str]]:
    """(file, name in archive) for every selected file; directories contribute their files recursively."""
    entries: list[tuple[Path, str]] = []
    for source in sources:
        if source.is_dir():
            for folder, _, files in os.walk(source):
                for name in sorted(files):
                    path = Path(folder) / name
                    if not path.is_symlink():
                        entries.append((path, str(Path(source.name) / path.relative_to(source))))
        else:
            entries.append((source, source.name))
    names = [name for _, name in entries]
    if len(set(names)) != len(names):
        raise StepFailed("two selected files would have the same name inside the archive")
    return entries


def _select(raw: Any, context: StepContext) -> list[Path]:
    selected: list[Path] = []
    for item in as_list(raw):
        path = resolve_path(item, context.work_dir, context.allowed_roots) if isinstance(item, str) else None
        if path is not None and path.is_dir():
            selected.append(path)
        else:
            selected.extend(select_sources(item, context))
    return selected


def _move_into_place(built: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(built, target)
    except OSError:  # another file system: copy beside the target, then rename there
        temporary = target.with_name(f".{target.name}.courier-tmp")
        with reporting_disk_full(target, remove=[temporary], needed=built.stat().st_size):
            shutil.copyfile(built, temporary)
        os.replace(temporary, target)
        built.unlink()


class _ProgressReader:
    """File wrapper that checks for cancel and reports progress as an archiver reads it."""

    def __init__(self, path: Path, context: StepContext, cancel: CancelToken) -> None:
        self.handle = path.open("rb")
        self.context = context
        self.cancel = cancel

    def read(self, size: int = -1) -> bytes:
        self.cancel.check()
        data = self.handle.read(size if size and size > 0 else guard.CHUNK)
        self.context.progress.add(len(data))
        return data

    def close(self) -> None:
        self.handle.close()

    def __enter__(self) -> _ProgressReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _WatchedPath(type(Path())):  # type: ignore[misc]
    """A source path whose open() hands py7zr a _ProgressReader: py7zr reads each file through
    origin.open("rb") block by block, so cancel and progress work within one large file too."""

    watch: tuple[StepContext, CancelToken] | None = None

    def open(self, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        if mode == "rb" and self.watch is not None:
            return _ProgressReader(Path(self), *self.watch)
        return super().open(mode, *args, **kwargs)


def _watched(path: Path, context: StepContext, cancel: CancelToken) -> _WatchedPath:
    watched = _WatchedPath(path)
    watched.watch = (context, cancel)
    return watched


@register
class ZipStep(StepType):
    type_key = "file.zip"
    label = "Build an archive"
    description = "Pack files into a zip (optionally AES-256 encrypted), tar, tar.gz, gzip or 7z archive."
    fields = (
        ConfigField("source_path", "string_or_list", required=True, help="Files, globs or directories to pack."),
        ConfigField("output_path", "string", required=True, help="The archive to write."),
        ConfigField("format", "string", default="zip", choices=FORMATS, help="Archive format."),
        ConfigField("password", "string", secret=True, help="Encrypts zip (AES-256) and 7z archives."),
        ConfigField("split_max_size_mb", "integer", help="Zip only: split into parts of at most this many MB."),
        ConfigField("overwrite", "boolean", default=True, help="Replace an existing archive."),
    )
    outputs = ("archive_path", "parts")

    def validate(self, config: dict[str, Any], step_label: str = "step") -> list[str]:
        problems = super().validate(config, step_label)
        archive_format = config.get("format", "zip")
        if config.get("password") and archive_format not in ("zip", "7z"):
            problems.append(f"{step_label}: key 'password' only works with zip and 7z, not {archive_format}")
        if config.get("split_max_size_mb") is not None and archive_format != "zip":
            problems.append(f"{step_label}: key 'split_max_size_mb' only works with zip")
        split = config.get("split_max_size_mb")
        if isinstance(split, int) and not isinstance(split, bool) and split < 1:
            problems.append(f"{step_label}: key 'split_max_size_mb' must be at least 1")
        return problems

    def execute(self, config: dict[str, Any], context: StepContext, cancel: CancelToken) -> StepResult:
        archive_format = config.get("format") or "zip"
        entries = _collect(_select(config["source_path"], context))
        if archive_format == "gzip" and (len(entries) != 1):
            raise StepFailed(f"gzip packs exactly one file; {len(entries)} were selected (use tar.gz or zip)")
        target = resolve_path(config["output_path"], context.work_dir, context.allowed_roots)
        if target.exists() and not config.get("overwrite", True):
            raise StepFailed(f"archive {target} exists and overwrite is false")
        context.progress.bytes_total = sum(path.stat().st_size for path, _ in entries)
        built = context.work_dir / f"{BUILD_PREFIX}{uuid.uuid4().hex}"
        try:
            builders = {"zip": self._zip, "tar": self._tar, "tar.gz": self._tar, "gzip": self._gzip, "7z": self._7z}
            with reporting_disk_full(built, remove=[built]):
                builders[archive_format](built, entries, config, context, cancel)
            parts = self._split(built, target, config.get("split_max_size_mb"))
            if not parts:
                _move_into_place(built, target)
                parts = [str(target)]
        finally:
            with contextlib.suppress(FileNotFoundError):
                built.unlink()
        size = sum(Path(part).stat().st_size for part in parts)
        return StepResult(outputs={"archive_path": parts[0], "parts": parts}, bytes_processed=size, files=parts)

    def _zip(self, built: Path, entries: list, config: dict[str, Any], context: StepContext, cancel: Any) -> None:
        password = config.get("password")
        if password:
            archive = pyzipper.AESZipFile(built, "w", compression=pyzipper.ZIP_DEFLATED, encryption=pyzipper.WZ_AES)
            archive.setpassword(password.encode())
            archive.setencryption(pyzipper.WZ_AES, nbits=256)
        else:
            archive = zipfile.ZipFile(built, "w", compression=zipfile.ZIP_DEFLATED, allowZip64=True)
        with archive:
            for path, name in entries:
                info = (
                    archive.zipinfo_cls.from_file(path, arcname=name)
                    if password
                    else zipfile.ZipInfo.from_file(path, arcname=name)
                )  # keeps the file's mode and time
                info.compress_type = zipfile.ZIP_DEFLATED
                with path.open("rb") as data, archive.open(info, "w", force_zip64=True) as output:
                    for chunk in iter_chunks(data, cancel, guard.CHUNK):
                        output.write(chunk)
                        context.progress.add(len(chunk))

    def _tar(self, built: Path, entries: list, config: dict[str, Any], context: StepContext, cancel: Any) -> None:
        mode = "w:gz" if config.get("format") == "tar.gz" else "w"
        with tarfile.open(built, mode) as archive:
            for path, name in entries:
                info = archive.gettarinfo(str(path), arcname=name)
                reader = _ProgressReader(path, context, cancel)
                try:
                    archive.addfile(info, reader)
                finally:
                    reader.close()

    def _gzip(self, built: Path, entries: list, config: dict[str, Any], context: StepContext, cancel: Any) -> None:
        path, _ = entries[0]
        with path.open("rb") as data, gzip.open(built, "wb") as output:
            for chunk in iter_chunks(data, cancel, guard.CHUNK):
                output.write(chunk)
                context.progress.add(len(chunk))

    def _7z(self, built: Path, entries: list, config: dict[str, Any], context: StepContext, cancel: Any) -> None:
        password = config.get("password") or None
        with py7zr.SevenZipFile(built, "w", password=password, header_encryption=bool(password)) as archive:
            for path, name in entries:
                cancel.check()
                archive.write(_watched(path, context, cancel), arcname=name)

    @staticmethod
    def _split(built: Path, target: Path, max_mb: int | None) -> list[str]:
        if not max_mb or built.stat().st_size <= max_mb * 1024 * 1024:
            return []
        limit = max_mb * 1024 * 1024
        target.parent.mkdir(parents=True, exist_ok=True)
        parts: list[str] = []
        with built.open("rb") as data:
            number = 1
            while True:
                chunk = data.read(limit)
                if not chunk:
                    break
                part = target.with_name(f"{target.name}.{number:03d}")
                temporary = part.with_name(f".{part.name}.courier-tmp")
                # Half a split archive is no archive: the parts written so far go too.
                with reporting_disk_full(part, remove=[temporary, *map(Path, parts)], needed=built.stat().st_size):
                    temporary.write_bytes(chunk)
                os.replace(temporary, part)
                parts.append(str(part))
                number += 1
        return parts

    def cleanup_before_retry(self, config: dict[str, Any], context: StepContext) -> None:
        for leftover in context.work_dir.glob(f"{BUILD_PREFIX}*"):
            leftover.unlink(missing_ok=True)
        # The copy onto another file system, or a split part, half written beside the target.
        if not config.get("output_path"):
            return
        target = resolve_path(config["output_path"], context.work_dir, context.allowed_roots)
        if target.parent.is_dir():
            name = glob.escape(target.name)
            for pattern in (f".{name}.courier-tmp", f".{name}.[0-9][0-9][0-9].courier-tmp"):
                for leftover in target.parent.glob(pattern):
                    leftover.unlink(missing_ok=True)


def detect_format(path: Path) -> str:
    name = path.name.lower()
    if py7zr.is_7zfile(path):
        return "7z"
    if zipfile.is_zipfile(path):
        return "zip"
    with path.open("rb") as handle:
        magic = handle.read(2)
    if magic == b"\x1f\x8b":
        try:
            with tarfile.open(path, "r:gz") as archive:
                archive.next()
            return "tar.gz"
        except (tarfile.TarError, OSError, EOFError):
            return "gzip"
    if tarfile.is_tarfile(path):
        return "tar"
    raise ArchiveError(
        f"{path.name} is not a zip, tar, tar.gz, gzip or 7z archive"
        + (" (is it one part of a split archive? give the .001 part)" if name[-4:-3] == "." else "")
    )


class _GuardedWriter(Py7zIO):
    """py7zr writer that places each entry safely and enforces the budget while it decompresses."""

    def __init__(self, target: Path, name: str, compressed: int | None, budget: guard.ExtractionBudget) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        self.handle = target.open("xb")
        self.name = name
        self.compressed = compressed
        self.budget = budget
        self.count = 0

    def write(self, data: bytes | bytearray) -> int:
        self.count += len(data)
        self.budget.written(self.name, self.count, self.compressed, len(data))
        return self.handle.write(data)

    def read(self, size: int | None = None) -> bytes:
        return b""

    def seek(self, offset: int, whence: int = 0) -> int:
        return self.handle.seek(offset, whence)

    def flush(self) -> None:
        self.handle.flush()

    def size(self) -> int:
        return self.count

    def close(self) -> None:
        self.handle.close()


class _GuardedFactory(WriterFactory):
    def __init__(self, root: Path, sizes: dict[str, int | None], budget: guard.ExtractionBudget) -> None:
        self.root, self.sizes, self.budget = root, sizes, budget
        self.writers: list[_GuardedWriter] = []

    def create(self, filename: str) -> Py7zIO:
        # py7zr hands over the destination path under the extraction root; judge the entry name.
        name = os.path.relpath(filename, self.root) if os.path.isabs(filename) else filename
        self.budget.next_entry(name)
        writer = _GuardedWriter(guard.safe_member_path(self.root, name), name, self.sizes.get(name), self.budget)
        self.writers.append(writer)
        return writer


@register
class UnzipStep(StepType):
    type_key = "file.unzip"
    label = "Extract an archive"
    description = "Extract a zip (AES too), tar, tar.gz, gzip or 7z archive, or a split zip, treating it as hostile."
    fields = (
        ConfigField("archive_path", "string", required=True, help="The archive, or the .001 part of a split one."),
        ConfigField("output_directory", "string", required=True, help="Directory that receives the files."),
        ConfigField("password", "string", secret=True, help="Password of an encrypted zip or 7z."),
        ConfigField("format", "string", choices=FORMATS, help="Leave empty to detect it from the content."),
        ConfigField("overwrite", "boolean", default=True, help="Replace files that already exist."),
    )
    outputs = ("extracted_directory", "extracted_files")

    def execute(self, config: dict[str, Any], context: StepContext, cancel: CancelToken) -> StepResult:
        archive = resolve_path(config["archive_path"], context.work_dir, context.allowed_roots)
        output = resolve_path(config["output_directory"], context.work_dir, context.allowed_roots)
        joined: Path | None = None
        if archive.name.endswith(".001"):
            archive = joined = self._join_parts(archive, context, cancel)
        if not archive.is_file():
            raise StepFailed(f"no archive at {archive}")
        try:
            archive_format = config.get("format") or detect_format(archive)
            output.mkdir(parents=True, exist_ok=True)
            staging = output / f"{EXTRACT_PREFIX}{uuid.uuid4().hex}"
            staging.mkdir()
            try:
                budget = guard.ExtractionBudget(archive.stat().st_size, cancel)
                context.progress.bytes_total = archive.stat().st_size
                extractors = {
                    "zip": self._zip,
                    "tar": self._tar,
                    "tar.gz": self._tar,
                    "gzip": self._gzip,
                    "7z": self._7z,
                }
                # The staging folder, removed below, holds all there is of a half-done extraction.
                with reporting_disk_full(output):
                    extractors[archive_format](archive, staging.resolve(), config, budget)
                guard.sweep(staging.resolve())
                files = self._publish(staging, output, config.get("overwrite", True))
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        finally:
            if joined is not None:
                joined.unlink(missing_ok=True)
        context.progress.add(budget.total)
        return StepResult(
            outputs={"extracted_directory": str(output), "extracted_files": files},
            bytes_processed=budget.total,
            files=files,
        )

    @staticmethod
    def _join_parts(first: Path, context: StepContext, cancel: CancelToken) -> Path:
        base = first.name[: -len(".001")]
        joined = context.work_dir / f"{BUILD_PREFIX}{uuid.uuid4().hex}-{base}"
        number = 1
        with joined.open("wb") as output:
            while (part := first.with_name(f"{base}.{number:03d}")).exists():
                with part.open("rb") as data:
                    for chunk in iter_chunks(data, cancel, guard.CHUNK):
                        output.write(chunk)
                number += 1
        return joined

    @staticmethod
    def _publish(staging: Path, output: Path, overwrite: bool) -> list[str]:
        moves = []
        for folder, _, files in os.walk(staging):
            for name in files:
                source = Path(folder) / name
                target = output / source.relative_to(staging)
                if target.exists() and not overwrite:
                    raise StepFailed(f"{target} exists and overwrite is false")
                moves.append((source, target))
        for source, target in moves:
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(source, target)
        return sorted(str(target) for _, target in moves)

    def _zip(self, archive: Path, root: Path, config: dict[str, Any], budget: guard.ExtractionBudget) -> None:
        password = (config.get("password") or "").encode() or None
        try:
            with pyzipper.AESZipFile(archive) as bundle:
                for info in bundle.infolist():
                    budget.next_entry(info.filename)
                    target = guard.safe_member_path(root, info.filename)
                    mode = info.external_attr >> 16
                    if stat.S_ISLNK(mode):
                        raise HostileArchive(f"archive entry {info.filename!r} is a symbolic link; links are refused")
                    if info.is_dir():
                        target.mkdir(parents=True, exist_ok=True)
                        continue
                    if stat.S_IFMT(mode) not in (0, stat.S_IFREG):
                        raise HostileArchive(f"archive entry {info.filename!r} is not a regular file")
                    with bundle.open(info, pwd=password) as data:
                        guard.stream_entry(data, target, info.filename, info.compress_size, budget)
        except RuntimeError as error:
            text = str(error).lower()
            if "password" in text or "encrypted" in text:
                message = "wrong password" if password else "the archive is encrypted and no password was given"
                raise ArchiveError(f"{archive.name}: {message}") from None
            raise ArchiveError(f"{archive.name}: {error}") from None
        except (zipfile.BadZipFile, zlib.error, EOFError) as error:
            raise ArchiveError(f"{archive.name} is corrupt: {error}") from None

    def _tar(self, archive: Path, root: Path, config: dict[str, Any], budget: guard.ExtractionBudget) -> None:
        try:
            with tarfile.open(archive, "r:*") as bundle:
                for member in bundle:
                    budget.next_entry(member.name)
                    target = guard.safe_member_path(root, member.name)
                    if member.issym() or member.islnk():
                        raise HostileArchive(f"archive entry {member.name!r} is a link; links are refused")
                    if member.isdir():
                        target.mkdir(parents=True, exist_ok=True)
                        continue
                    if not member.isfile():
                        raise HostileArchive(f"archive entry {member.name!r} is a device or special file")
                    data = bundle.extractfile(member)
                    if data is None:
                        continue
                    with data:
                        guard.stream_entry(data, target, member.name, None, budget)
        except (tarfile.TarError, EOFError, OSError) as error:
            if is_disk_full(error):
                raise  # our disk, not the archive
            raise ArchiveError(f"{archive.name} is corrupt: {error}") from None

    def _gzip(self, archive: Path, root: Path, config: dict[str, Any], budget: guard.ExtractionBudget) -> None:
        name = archive.name[:-3] if archive.name.lower().endswith(".gz") else f"{archive.name}.out"
        budget.next_entry(name)
        try:
            with gzip.open(archive, "rb") as data:
                guard.stream_entry(data, guard.safe_member_path(root, name), name, None, budget)
        except (OSError, EOFError) as error:
            if is_disk_full(error):
                raise  # our disk, not the archive
            raise ArchiveError(f"{archive.name} is corrupt: {error}") from None

    def _7z(self, archive: Path, root: Path, config: dict[str, Any], budget: guard.ExtractionBudget) -> None:
        password = config.get("password") or None
        try:
            with py7zr.SevenZipFile(archive, "r", password=password) as bundle:
                infos = bundle.list()
                for info in infos:
                    if info.is_symlink:
                        raise HostileArchive(f"archive entry {info.filename!r} is a symbolic link; links are refused")
                    guard.safe_member_path(root, info.filename)
                sizes = {info.filename: info.compressed for info in infos}
                factory = _GuardedFactory(root, sizes, budget)
                try:
                    # Names were checked above and every write goes through the guarded factory.
                    bundle.extractall(path=root, factory=factory)  # noqa: S202
                finally:
                    for writer in factory.writers:
                        writer.close()
        except (HostileArchive, ArchiveError):
            raise
        except py7zr.exceptions.PasswordRequired:
            raise ArchiveError(f"{archive.name}: the archive is encrypted and no password was given") from None
        except Exception as error:  # py7zr reports a wrong password as a CRC or decompression error
            if is_disk_full(error):
                raise  # our disk, not the archive
            message = "wrong password or corrupt archive" if password else "corrupt archive"
            raise ArchiveError(f"{archive.name}: {message} ({type(error).__name__})") from None

    def cleanup_before_retry(self, config: dict[str, Any], context: StepContext) -> None:
        for leftover in context.work_dir.glob(f"{BUILD_PREFIX}*"):
            leftover.unlink(missing_ok=True)
