"""Transfer steps for SFTP, FTP and FTPS: upload, download, list and remote file operations."""

from __future__ import annotations

import ftplib
import hashlib
import os
import time
import uuid
from pathlib import Path
from typing import Any

import paramiko

from connections.errors import ConnectionFailed, RemoteFileError
from connections.models import Connection
from connections.transfer.base import TEMP_SUFFIX, join, matches
from jobs.diskfull import reporting_disk_full
from jobs.errors import StepFailed
from jobs.paths import resolve_path
from jobs.steps.base import CancelToken, ConfigField, StepContext, StepResult, StepType, register
from jobs.steps.files import select_sources

PROTOCOLS = ("sftp", "ftp", "ftps")
PART_SUFFIX = ".courier-part"
# Errors of a dropped session, worth a reconnect; refusals (permissions, missing files) are not.
TRANSIENT = (
    EOFError,
    ConnectionError,
    TimeoutError,
    OSError,
    paramiko.SSHException,
    ftplib.error_temp,
    ftplib.error_reply,
    ConnectionFailed,
)
PERMANENT = (FileNotFoundError, PermissionError, ftplib.error_perm, RemoteFileError)

CONNECTION_FIELD = ConfigField("connection_id", "string", required=True, help="The connection to use (its id).")


def _check_connection(config: dict[str, Any], protocol: str, step_label: str) -> list[str]:
    """The referenced connection must exist, be active and speak this step's protocol."""
    value = config.get("connection_id")
    if not isinstance(value, str) or value.startswith("context:"):
        return []

    try:
        connection = Connection.objects.filter(pk=uuid.UUID(value)).first()
    except ValueError:
        return [f"{step_label}: key 'connection_id' is not a connection id: {value!r}"]
    if connection is None:
        return [f"{step_label}: key 'connection_id' names no connection (deleted?)"]
    if connection.protocol != protocol:
        return [f"{step_label}: connection '{connection.name}' is {connection.protocol}, this step needs {protocol}"]
    if connection.status != "active":
        return [f"{step_label}: connection '{connection.name}' is disabled"]
    return []


def elapsed_ms(started: float) -> float:
    """Milliseconds since a time.monotonic() reading, for audit records."""
    return round((time.monotonic() - started) * 1000, 1)


def with_retries(session: Any, retries: int, cancel: CancelToken, action: Any) -> Any:
    """Run action(session); after a dropped session reconnect and try again, up to retries times."""
    attempt = 0
    while True:
        cancel.check()
        try:
            return action()
        except PERMANENT:
            raise
        except TRANSIENT as error:
            if attempt >= retries:
                raise ConnectionFailed(
                    f"the session with {where(session)} dropped and {retries} reconnect(s) did not help: "
                    f"{describe_drop(session, error)}"
                ) from None
            attempt += 1
            session.reconnect()


def where(session: Any) -> str:
    return f"{session.connection.host}:{session.connection.port}"


def describe_drop(session: Any, error: BaseException) -> str:
    """What ended the session, in words: a bare socket timeout says nothing by itself."""
    if isinstance(error, TimeoutError):
        seconds = session.connection.operation_timeout_sec
        return f"{where(session)} sent nothing for {seconds} s (operation timeout)"
    return str(error) or type(error).__name__


class _RemoteStep(StepType):
    protocol: str = "sftp"

    def validate(self, config: dict[str, Any], step_label: str = "step") -> list[str]:
        problems = super().validate(config, step_label)
        return problems or _check_connection(config, self.protocol, step_label)

    def session(self, config: dict[str, Any], context: StepContext) -> Any:
        return context.sessions.get(config["connection_id"])

    def retries(self, session: Any) -> int:
        return session.connection.transport_retries


class _Upload(_RemoteStep):
    operation = "upload"
    fields = (
        CONNECTION_FIELD,
        ConfigField("local_path", "string_or_list", required=True, help="Local file(s), glob or list."),
        ConfigField(
            "remote_path",
            "string",
            required=True,
            help="Remote directory (ends with /) that receives the files by name, or a remote file name.",
        ),
        ConfigField(
            "atomic",
            "boolean",
            default=True,
            help="Write <name>.courier-tmp and rename it, so partners never see a partial file.",
        ),
        ConfigField("overwrite", "boolean", default=True, help="Replace remote files that exist."),
        ConfigField(
            "verify_sha256",
            "boolean",
            default=False,
            help="Read each uploaded file back and compare its SHA-256 (costs a second transfer).",
        ),
    )
    outputs = ("uploaded_files", "sha256")

    def execute(self, config: dict[str, Any], context: StepContext, cancel: CancelToken) -> StepResult:
        session = self.session(config, context)
        sources = select_sources(config["local_path"], context)
        remote = config["remote_path"]
        into_directory = remote.endswith("/") or len(sources) > 1
        context.progress.bytes_total = sum(source.stat().st_size for source in sources)
        uploaded, total, digests = [], 0, {}
        if into_directory:
            with_retries(session, self.retries(session), cancel, lambda: session.mkdir(remote.rstrip("/") or "/"))
        for source in sources:
            target = join(remote.rstrip("/"), source.name) if into_directory else remote
            total += self._upload_one(session, source, target, config, context, cancel)
            uploaded.append(target)
            if config.get("verify_sha256"):
                digests[target] = self._verify(session, source, target, cancel)
        return StepResult(outputs={"uploaded_files": uploaded, "sha256": digests}, bytes_processed=total)

    def _verify(self, session: Any, source: Path, target: str, cancel: CancelToken) -> str:
        """SHA-256 of the local file and of the remote file read back; they must match."""
        local = hashlib.sha256()
        with source.open("rb") as data:
            for block in iter(lambda: data.read(1024 * 1024), b""):
                local.update(block)

        class _Hasher:
            def __init__(self) -> None:
                self.digest = hashlib.sha256()

            def write(self, block: bytes) -> None:
                self.digest.update(block)

        def read_back() -> str:
            sink = _Hasher()
            session.download(target, sink, 0, lambda count: cancel.check())
            return sink.digest.hexdigest()

        remote = with_retries(session, self.retries(session), cancel, read_back)
        if remote != local.hexdigest():
            raise RemoteFileError(
                f"SHA-256 of {target} read back ({remote}) differs from the local file ({local.hexdigest()})"
            )
        return remote

    def _upload_one(
        self, session: Any, source: Path, target: str, config: dict[str, Any], context: StepContext, cancel: CancelToken
    ) -> int:
        if not config.get("overwrite", True) and session.stat(target) is not None:
            raise StepFailed(f"remote file {target} exists and overwrite is false")
        written = target + TEMP_SUFFIX if config.get("atomic", True) else target
        size = source.stat().st_size
        started = time.monotonic()  # the duration audited includes reconnects and retried tries

        def send() -> int:
            if written != target and session.stat(written) is not None:
                session.delete(written)  # leftover of a failed try
            with source.open("rb") as data:
                sent = session.upload(data, written, lambda count: (cancel.check(), context.progress.add(count)))
            remote = session.stat(written)
            if remote is None or remote.size != size:
                raise RemoteFileError(
                    f"upload of {source.name} incomplete: {remote.size if remote else 0} of {size} bytes"
                )
            if written != target:
                session.rename(written, target)
            session.events.append(
                ("file_uploaded", {"file": target, "bytes": sent, "duration_ms": elapsed_ms(started)})
            )
            return sent

        return with_retries(session, self.retries(session), cancel, send)


class _Download(_RemoteStep):
    operation = "download"
    fields = (
        CONNECTION_FIELD,
        ConfigField("remote_path", "string", required=True, help="Remote directory to fetch from."),
        ConfigField("file_pattern", "string", default="*", help="Globs on the file name, comma-separated."),
        ConfigField("local_path", "string", default="downloads/", help="Local directory that receives the files."),
        ConfigField("delete_after_download", "boolean", default=False, help="Remove each remote file once fetched."),
        ConfigField("skip_existing", "boolean", default=False, help="Skip files already present with the same size."),
    )
    outputs = ("downloaded_files",)

    def execute(self, config: dict[str, Any], context: StepContext, cancel: CancelToken) -> StepResult:
        session = self.session(config, context)
        retries = self.retries(session)
        directory = config["remote_path"]
        listing = with_retries(session, retries, cancel, lambda: session.listdir(directory))
        wanted = [
            entry
            for entry in listing
            if not entry.is_dir
            and matches(entry.name, config.get("file_pattern"))
            and not entry.name.endswith(TEMP_SUFFIX)
        ]
        local_dir = resolve_path(config.get("local_path") or "downloads/", context.work_dir, context.allowed_roots)
        local_dir.mkdir(parents=True, exist_ok=True)
        context.progress.bytes_total = sum(entry.size for entry in wanted)
        downloaded, total = [], 0
        for entry in wanted:
            target = resolve_path(local_dir / entry.name, context.work_dir, context.allowed_roots)
            if config.get("skip_existing") and target.exists() and target.stat().st_size == entry.size:
                continue
            total += self._download_one(session, entry, target, retries, context, cancel)
            downloaded.append(str(target))
            if config.get("delete_after_download"):
                with_retries(session, retries, cancel, lambda entry=entry: session.delete(entry.path))
        return StepResult(outputs={"downloaded_files": downloaded}, bytes_processed=total, files=downloaded)

    def _download_one(
        self, session: Any, entry: Any, target: Path, retries: int, context: StepContext, cancel: CancelToken
    ) -> int:
        partial = target.with_name(target.name + PART_SUFFIX)
        started = time.monotonic()  # the duration audited includes reconnects and retried tries

        def fetch() -> int:
            offset = partial.stat().st_size if partial.exists() else 0
            if offset > entry.size:  # the source shrank or changed: start again
                partial.unlink()
                offset = 0
            if offset < entry.size or entry.size == 0:
                # A full local disk is no dropped session: no reconnect, and the partial goes,
                # since it cannot grow and only keeps other work from the space it holds.
                # Opened for writing at a position, not for appending: a segmented download
                # writes each range at its place.
                with (
                    reporting_disk_full(partial, remove=[partial], needed=entry.size),
                    partial.open("r+b" if offset else "wb") as local,
                ):
                    local.seek(offset)
                    session.download(
                        entry.path, local, offset, lambda count: (cancel.check(), context.progress.add(count))
                    )
            size = partial.stat().st_size if partial.exists() else 0
            if size != entry.size:
                raise RemoteFileError(f"download of {entry.name} incomplete: {size} of {entry.size} bytes")
            os.replace(partial, target)
            session.events.append(
                (
                    "file_downloaded",
                    {"file": entry.path, "bytes": size, "resumed_from": offset, "duration_ms": elapsed_ms(started)},
                )
            )
            return size

        return with_retries(session, retries, cancel, fetch)

    def cleanup_before_retry(self, config: dict[str, Any], context: StepContext) -> None:
        """Partial downloads are kept on purpose: the retry resumes from them."""


class _List(_RemoteStep):
    operation = "list"
    fields = (
        CONNECTION_FIELD,
        ConfigField("remote_path", "string", required=True, help="Remote directory to list."),
        ConfigField("file_pattern", "string", default="*", help="Globs on the file name, comma-separated."),
    )
    outputs = ("file_list", "file_count")

    def execute(self, config: dict[str, Any], context: StepContext, cancel: CancelToken) -> StepResult:
        session = self.session(config, context)
        listing = with_retries(session, self.retries(session), cancel, lambda: session.listdir(config["remote_path"]))
        files = [
            entry.as_dict()
            for entry in sorted(listing, key=lambda item: item.name)
            if not entry.is_dir and matches(entry.name, config.get("file_pattern"))
        ]
        return StepResult(outputs={"file_list": files, "file_count": len(files)})


class _PathOperation(_RemoteStep):
    fields = (CONNECTION_FIELD, ConfigField("remote_path", "string", required=True, help="Remote path."))
    method = ""

    def execute(self, config: dict[str, Any], context: StepContext, cancel: CancelToken) -> StepResult:
        session = self.session(config, context)
        operation = getattr(session, self.method)
        with_retries(session, self.retries(session), cancel, lambda: operation(config["remote_path"]))
        return StepResult(outputs={"remote_path": config["remote_path"]})


class _Rename(_RemoteStep):
    operation = "rename"
    fields = (
        CONNECTION_FIELD,
        ConfigField("remote_path", "string", required=True, help="Remote file to rename or move."),
        ConfigField("new_path", "string", required=True, help="Its new remote path."),
    )
    outputs = ("remote_path",)

    def execute(self, config: dict[str, Any], context: StepContext, cancel: CancelToken) -> StepResult:
        session = self.session(config, context)
        with_retries(
            session, self.retries(session), cancel, lambda: session.rename(config["remote_path"], config["new_path"])
        )
        return StepResult(outputs={"remote_path": config["new_path"]})


def _register_all() -> None:
    descriptions = {
        "upload": ("Upload files", _Upload),
        "download": ("Download files", _Download),
        "list": ("List a remote directory", _List),
        "rename": ("Rename a remote file", _Rename),
    }
    for protocol in PROTOCOLS:
        for operation, (label, base) in descriptions.items():
            register(
                type(
                    f"{protocol.title()}{operation.title()}Step",
                    (base,),
                    {
                        "type_key": f"{protocol}.{operation}",
                        "protocol": protocol,
                        "label": f"{label} ({protocol.upper()})",
                        "description": f"{label} over {protocol.upper()}.",
                    },
                )
            )
        for operation, method, label in (
            ("mkdir", "mkdir", "Create a remote directory"),
            ("rmdir", "rmdir", "Remove a remote directory"),
            ("delete", "delete", "Delete a remote file"),
        ):
            register(
                type(
                    f"{protocol.title()}{operation.title()}Step",
                    (_PathOperation,),
                    {
                        "type_key": f"{protocol}.{operation}",
                        "protocol": protocol,
                        "method": method,
                        "outputs": ("remote_path",),
                        "label": f"{label} ({protocol.upper()})",
                        "description": f"{label} over {protocol.upper()}.",
                    },
                )
            )


_register_all()
