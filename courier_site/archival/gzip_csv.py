"""Gzip-compressed CSV as partition archives hold it: hashing streams, record counting, read-back (no Django)."""

from __future__ import annotations

import csv
import gzip
import hashlib
from dataclasses import dataclass
from typing import BinaryIO

READ_CHUNK = 1024 * 1024


class HashingWriter:
    """A write-only stream that hashes and counts what passes through to the storage."""

    def __init__(self, target: BinaryIO) -> None:
        self.target = target
        self.digest = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        self.size += len(data)
        self.target.write(data)
        return len(data)

    def flush(self) -> None:
        self.target.flush()


class HashingReader:
    """A read-only stream that hashes and counts what is read from the storage."""

    def __init__(self, source: BinaryIO) -> None:
        self.source = source
        self.digest = hashlib.sha256()
        self.size = 0

    def read(self, size: int = -1) -> bytes:
        data = self.source.read(size)
        self.digest.update(data)
        self.size += len(data)
        return data


class CsvRecordCounter:
    """Counts the records of CSV as PostgreSQL's COPY writes it, fed in arbitrary chunks.

    A newline ends a record unless it sits inside a quoted field. Quotes inside a field
    are doubled, so an odd number of quote characters on a line flips the state. Splitting
    at newlines keeps the Python work per record, not per character, and needs no limit
    on field size (unlike the csv module).
    """

    def __init__(self) -> None:
        self.records = 0
        self.in_quotes = False
        self.pending = False  # bytes after the last record end
        self._header = bytearray()
        self._header_done = False

    def feed(self, chunk: bytes) -> None:
        if not self._header_done:
            head, newline, _ = chunk.partition(b"\n")
            self._header += head
            self._header_done = bool(newline)
        pieces = chunk.split(b"\n")
        for piece in pieces[:-1]:
            if piece.count(b'"') % 2:
                self.in_quotes = not self.in_quotes
            if not self.in_quotes:
                self.records += 1
        last = pieces[-1]
        if last.count(b'"') % 2:
            self.in_quotes = not self.in_quotes
        if chunk:
            self.pending = bool(last) or self.in_quotes

    @property
    def complete(self) -> bool:
        """Whether the data ended exactly at a record boundary."""
        return not self.pending and not self.in_quotes

    def header(self) -> list[str]:
        return next(csv.reader([self._header.decode("utf-8")]), [])


@dataclass
class ReadBack:
    """What a stored archive turned out to hold when read back."""

    sha256: str
    size: int
    rows: int  # data records, header excluded
    header: list[str]
    complete: bool  # ended exactly at a record boundary


def read_back(stream: BinaryIO) -> ReadBack:
    """Checksum and decompress an archive in chunks, counting its CSV records.

    Raises OSError (gzip.BadGzipFile) or EOFError when the data is not one whole gzip stream.
    """
    source = HashingReader(stream)
    counter = CsvRecordCounter()
    with gzip.GzipFile(fileobj=source, mode="rb") as plain:
        while chunk := plain.read(READ_CHUNK):
            counter.feed(chunk)
    # gzip stops at the end of its data; anything stored after it still counts for the checksum.
    while source.read(READ_CHUNK):
        pass
    return ReadBack(
        sha256=source.digest.hexdigest(),
        size=source.size,
        rows=max(counter.records - 1, 0),
        header=counter.header(),
        complete=counter.complete and counter.records > 0,
    )
