"""PGP encrypt/decrypt of 1 GiB through Courier's steps against the gpg command line (SPEC 9: >= 90 %)."""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from bench.support import Figure, Report, scratch_database


def _rate(size: int, seconds: float) -> float:
    return size / seconds / 1024 / 1024


class ChildPeakRss:
    """Peak resident memory (MB) of this process's children, sampled from /proc while a block runs.

    Not getrusage(RUSAGE_CHILDREN): it keeps one maximum over every child that ever ended (Courier's
    gpg and the gpg command line alike), and that maximum includes the copy of this process a child
    is between fork and exec (78 MB here against gpg's 5 MB). VmHWM, read from each child while it
    lives, is the high-water mark of the program it runs.
    """

    def __init__(self, interval: float = 0.05) -> None:
        self.interval = interval
        self.peak_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="bench-child-rss", daemon=True)

    def __enter__(self) -> ChildPeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        parent = os.getpid()
        while True:
            for pid in _children(parent):
                self.peak_mb = max(self.peak_mb, _high_water_mark_mb(pid))
            if self._stop.wait(self.interval):
                return


def _children(parent: int) -> list[int]:
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{name}/stat").read_text()
        except OSError:  # ended between the listing and the read
            continue
        # "pid (command) state ppid …": the command may hold spaces and parentheses.
        if int(stat.rpartition(")")[2].split()[1]) == parent:
            found.append(int(name))
    return found


def _high_water_mark_mb(pid: int) -> float:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _settle() -> None:
    """Write back what earlier steps left in the page cache before the next timed run.

    The payload and every output stay dirty for up to 30 s. Once they pass the kernel's background
    threshold (10 % of memory), writeback competes with gpg for the disk and the CPUs, and the runs
    that come later (Courier's) would pay for the files of the runs before them.
    """
    os.sync()


def run(*, quick: bool = False) -> Report:
    from django.conf import settings

    from courier_site.envelope import keyring
    from jobs.steps.base import CancelToken, StepContext
    from keystore.services import generate_pgp_key
    from keystore.steps import DecryptStep, EncryptStep

    size = (128 if quick else 1024) * 1024 * 1024
    report = Report(f"PGP of {size // 1024 // 1024} MiB, binary, no compression")
    work = Path(tempfile.mkdtemp(prefix="courier-bench-pgp-"))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    try:
        with scratch_database():
            settings.COURIER_DATA_DIR = work
            key = generate_pgp_key("bench", "rsa_3072", by="bench")
            source = work / "payload.bin"
            with source.open("wb") as handle:
                for _ in range(size // (1024 * 1024)):
                    handle.write(os.urandom(1024 * 1024))
            home = work / "cli-home"
            home.mkdir(mode=0o700)
            secret = json.loads(keyring().open_text(key.private_key_data))["armored"]
            subprocess.run(
                ["gpg", "--homedir", str(home), "--batch", "--import"],
                input=secret.encode(),
                check=True,
                capture_output=True,
            )
            cli = [
                "gpg",
                "--homedir",
                str(home),
                "--batch",
                "--yes",
                "--trust-model",
                "always",
                "--compress-algo",
                "none",
                "--cipher-algo",
                "AES256",
                "--digest-algo",
                "SHA256",
            ]
            with ChildPeakRss() as cli_child:
                _settle()
                started = time.perf_counter()
                subprocess.run(
                    [*cli, "--recipient", key.fingerprint, "--output", str(work / "cli.pgp"), "--encrypt", str(source)],
                    check=True,
                    capture_output=True,
                )
                cli_encrypt = time.perf_counter() - started
                _settle()
                started = time.perf_counter()
                subprocess.run(
                    [*cli, "--output", str(work / "cli.out"), "--decrypt", str(work / "cli.pgp")],
                    check=True,
                    capture_output=True,
                )
                cli_decrypt = time.perf_counter() - started

            context = StepContext("bench", work, {}, CancelToken(), allowed_roots=(work,))
            encrypt = EncryptStep()
            config = encrypt.with_defaults(
                {"input_path": str(source), "recipient_key_ids": str(key.pk), "output_path": str(work / "courier.pgp")}
            )
            context.prepared = encrypt.prepare(config)
            decrypt = DecryptStep()
            decrypt_config = decrypt.with_defaults(
                {
                    "input_path": str(work / "courier.pgp"),
                    "private_key_id": str(key.pk),
                    "output_path": str(work / "courier.out"),
                }
            )
            with ChildPeakRss() as courier_child:
                _settle()
                started = time.perf_counter()
                encrypt.execute(config, context, CancelToken())
                courier_encrypt = time.perf_counter() - started
                context.prepared = decrypt.prepare(decrypt_config)
                _settle()
                started = time.perf_counter()
                decrypt.execute(decrypt_config, context, CancelToken())
                courier_decrypt = time.perf_counter() - started
            if (work / "courier.out").stat().st_size != size:
                raise RuntimeError("the decrypted file does not have the original size")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report.figures.append(
        Figure(
            "encrypt",
            _rate(size, courier_encrypt),
            "MiB/s",
            "gpg --encrypt",
            _rate(size, cli_encrypt),
            target_ratio=0.9,
        )
    )
    report.figures.append(
        Figure(
            "decrypt",
            _rate(size, courier_decrypt),
            "MiB/s",
            "gpg --decrypt",
            _rate(size, cli_decrypt),
            target_ratio=0.9,
        )
    )
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    report.figures.append(
        Figure(
            "peak RSS of the Courier process",
            peak,
            "MB",
            "RSS before",
            before / 1024,
            target_absolute=150,
            higher_is_better=False,
        )
    )
    report.figures.append(
        Figure(
            "peak RSS of Courier's gpg child",
            courier_child.peak_mb,
            "MB",
            "gpg command line",
            cli_child.peak_mb,
            target_absolute=150,
            higher_is_better=False,
        )
    )
    # The two peaks need not coincide: their sum is an upper bound of what Courier holds at once.
    report.figures.append(
        Figure(
            "peak RSS of the Courier process + its gpg child",
            peak + courier_child.peak_mb,
            "MB",
            "gpg command line",
            cli_child.peak_mb,
            target_absolute=150,
            higher_is_better=False,
        )
    )
    return report
