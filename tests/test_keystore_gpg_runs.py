"""keystore.pgp.run_on_file with real gpg: what it reports, how it stops, and when its output is not whole."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import gnupg
import pytest

from keystore import pgp


class Stop(Exception):
    pass


@pytest.fixture(scope="module")
def key_pair() -> pgp.PgpKeyMaterial:
    return pgp.generate("ecc_p256", "runs")


@pytest.fixture
def gpg(key_pair: pgp.PgpKeyMaterial) -> Iterator[gnupg.GPG]:
    with pgp.gnupg_home() as home:
        home.import_keys(json.loads(key_pair.secret_bundle or "{}")["armored"])
        yield home


def encrypt(
    gpg: gnupg.GPG,
    key_pair: pgp.PgpKeyMaterial,
    source: Path,
    output: Path,
    *,
    check: Callable[[], None] = lambda: None,
    on_progress: Callable[[int], None] = lambda count: None,
) -> gnupg.Crypt:
    return pgp.encrypt_file(
        gpg,
        source,
        output,
        [key_pair.fingerprint],
        armor=False,
        sign_with=None,
        extra_args=["--compress-algo", "none"],
        check=check,
        on_progress=on_progress,
    )


def test_progress_adds_up_to_the_size_of_the_source(
    gpg: gnupg.GPG, key_pair: pgp.PgpKeyMaterial, tmp_path: Path
) -> None:
    source = tmp_path / "data.bin"
    source.write_bytes(os.urandom(3 * 1024 * 1024 + 17))
    reports: list[int] = []

    result = encrypt(gpg, key_pair, source, tmp_path / "data.bin.pgp", on_progress=reports.append)

    assert pgp.run_problem(result) is None
    assert sum(reports) == source.stat().st_size and min(reports) >= 0


def test_what_check_raises_kills_gpg_and_propagates(
    gpg: gnupg.GPG, key_pair: pgp.PgpKeyMaterial, tmp_path: Path
) -> None:
    source = tmp_path / "large.bin"
    with source.open("wb") as handle:
        handle.truncate(8 * 1024 * 1024 * 1024)  # sparse; far more than gpg encrypts in the test's time
    read: list[int] = []

    def stop_once_started() -> None:
        if read:
            raise Stop

    started = time.monotonic()
    with pytest.raises(Stop):
        encrypt(gpg, key_pair, source, tmp_path / "large.bin.pgp", check=stop_once_started, on_progress=read.append)

    assert time.monotonic() - started < 2 * pgp.POLL_SECONDS + 1.0
    assert 0 < sum(read) < source.stat().st_size


def test_gpg_refuses_to_write_over_an_existing_output(
    gpg: gnupg.GPG, key_pair: pgp.PgpKeyMaterial, tmp_path: Path
) -> None:
    source = tmp_path / "data.txt"
    source.write_text("new")
    (tmp_path / "taken.pgp").write_text("someone else's file")

    result = encrypt(gpg, key_pair, source, tmp_path / "taken.pgp")

    assert pgp.run_problem(result) is not None
    assert (tmp_path / "taken.pgp").read_text() == "someone else's file"


def test_a_decryption_that_could_not_write_its_output_fails_though_gpg_says_decryption_ok(
    gpg: gnupg.GPG, key_pair: pgp.PgpKeyMaterial, tmp_path: Path
) -> None:
    source = tmp_path / "data.bin"
    source.write_bytes(os.urandom(1024 * 1024))
    encrypt(gpg, key_pair, source, tmp_path / "data.bin.pgp")

    # /dev/full stands in for a full disk: every write fails with ENOSPC. gpg gets a link to it, never
    # the device itself: gpg removes an output it failed to write, and a test may run as root.
    full_disk = tmp_path / "full"
    full_disk.symlink_to("/dev/full")
    result = pgp.run_on_file(
        gpg,
        ["--decrypt", "--yes", "--pinentry-mode", "error"],
        tmp_path / "data.bin.pgp",
        full_disk,
        gnupg.Crypt(gpg),
        check=lambda: None,
        on_progress=lambda count: None,
    )

    assert result.ok  # gpg 2.2 reports DECRYPTION_OKAY all the same
    assert pgp.run_problem(result) is not None
