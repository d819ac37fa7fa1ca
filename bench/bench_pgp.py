"""PGP encrypt/decrypt of 1 GiB through Courier's steps against the gpg command line (SPEC 9: >= 90 %).

Each side encrypts the same payload and decrypts one shared ciphertext, in rounds that take turns
at going first (COURIER_BENCH_PGP_ROUNDS, default 3); the best round of each side counts. Every
output is removed once timed: run after run left 1 GiB files in the page cache, and on this kind
of machine each one left there made later writes slower (gpg --encrypt went from 2.6 to 5.4 s
with 2 GiB of earlier outputs present), which penalised whichever side ran last.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
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


def rounds(quick: bool) -> int:
    """Rounds of each comparison (COURIER_BENCH_PGP_ROUNDS, default 3, 1 with --quick); the best counts."""
    return int(os.environ.get("COURIER_BENCH_PGP_ROUNDS", "1" if quick else "3"))


def _timed(action: Callable[[], object], output: Path) -> tuple[float, float]:
    """Seconds action takes to write output, which is removed before and after, and its children's peak RSS (MB).

    A 1 GiB output left in the page cache slows every later write on this kind of machine (up to
    twice the kernel time per GiB): each timed run starts with the same files present, the payload
    and the shared ciphertext only.
    """
    output.unlink(missing_ok=True)
    _settle()
    with ChildPeakRss() as children:
        started = time.perf_counter()
        action()
        seconds = time.perf_counter() - started
    output.unlink(missing_ok=True)
    return seconds, children.peak_mb


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
            # One ciphertext, made untimed, is what both sides decrypt.
            shared = work / "shared.pgp"
            subprocess.run(
                [*cli, "--recipient", key.fingerprint, "--output", str(shared), "--encrypt", str(source)],
                check=True,
                capture_output=True,
            )
            context = StepContext("bench", work, {}, CancelToken(), allowed_roots=(work,))
            encrypt, decrypt = EncryptStep(), DecryptStep()
            encrypt_config = encrypt.with_defaults(
                {"input_path": str(source), "recipient_key_ids": str(key.pk), "output_path": str(work / "courier.pgp")}
            )
            decrypt_config = decrypt.with_defaults(
                {"input_path": str(shared), "private_key_id": str(key.pk), "output_path": str(work / "courier.out")}
            )
            encrypt_prepared, decrypt_prepared = encrypt.prepare(encrypt_config), decrypt.prepare(decrypt_config)

            def courier_encrypt() -> None:
                context.prepared = encrypt_prepared
                encrypt.execute(encrypt_config, context, CancelToken())

            def courier_decrypt() -> None:
                context.prepared = decrypt_prepared
                decrypt.execute(decrypt_config, context, CancelToken())
                if (work / "courier.out").stat().st_size != size:
                    raise RuntimeError("the decrypted file does not have the original size")

            runs = {
                ("cli", "encrypt"): (
                    lambda: subprocess.run(
                        [
                            *cli,
                            "--recipient",
                            key.fingerprint,
                            "--output",
                            str(work / "cli.pgp"),
                            "--encrypt",
                            str(source),
                        ],
                        check=True,
                        capture_output=True,
                    ),
                    work / "cli.pgp",
                ),
                ("courier", "encrypt"): (courier_encrypt, work / "courier.pgp"),
                ("cli", "decrypt"): (
                    lambda: subprocess.run(
                        [*cli, "--output", str(work / "cli.out"), "--decrypt", str(shared)],
                        check=True,
                        capture_output=True,
                    ),
                    work / "cli.out",
                ),
                ("courier", "decrypt"): (courier_decrypt, work / "courier.out"),
            }
            timings: dict[tuple[str, str], list[float]] = {run: [] for run in runs}
            child_peak_mb = {"cli": 0.0, "courier": 0.0}
            for number in range(rounds(quick)):
                for operation in ("encrypt", "decrypt"):
                    # Taking turns at going first, so neither side always meets the machine as the
                    # other left it.
                    for side in ("courier", "cli") if number % 2 else ("cli", "courier"):
                        seconds, peak_mb = _timed(*runs[(side, operation)])
                        timings[(side, operation)].append(seconds)
                        child_peak_mb[side] = max(child_peak_mb[side], peak_mb)
            cli_encrypt, cli_decrypt = min(timings[("cli", "encrypt")]), min(timings[("cli", "decrypt")])
            courier_encrypt = min(timings[("courier", "encrypt")])
            courier_decrypt = min(timings[("courier", "decrypt")])
            for operation in ("encrypt", "decrypt"):
                report.notes.append(
                    f"{operation} rounds (s, best counts): Courier "
                    + "/".join(f"{seconds:.2f}" for seconds in timings[("courier", operation)])
                    + ", gpg "
                    + "/".join(f"{seconds:.2f}" for seconds in timings[("cli", operation)])
                )
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
            child_peak_mb["courier"],
            "MB",
            "gpg command line",
            child_peak_mb["cli"],
            target_absolute=150,
            higher_is_better=False,
        )
    )
    # The two peaks need not coincide: their sum is an upper bound of what Courier holds at once.
    report.figures.append(
        Figure(
            "peak RSS of the Courier process + its gpg child",
            peak + child_peak_mb["courier"],
            "MB",
            "gpg command line",
            child_peak_mb["cli"],
            target_absolute=150,
            higher_is_better=False,
        )
    )
    return report
