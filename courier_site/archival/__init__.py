"""Retention of the partitioned history tables (SPEC 3): export expired months, verify, then drop them."""

from __future__ import annotations

from courier_site.archival.service import (
    ArchiveExportFailed,
    ArchiveProgress,
    ArchiverBusy,
    ArchiveRun,
    ArchiveVerificationFailed,
    PartitionArchive,
    PartitionArchiver,
    PartitionDropFailed,
    archive_expired_partitions,
    archive_lock,
    verify_archive,
)
from courier_site.archival.status import ExportStatus, export_status

__all__ = [
    "ArchiveExportFailed",
    "ArchiveProgress",
    "ArchiveRun",
    "ArchiveVerificationFailed",
    "ArchiverBusy",
    "ExportStatus",
    "PartitionArchive",
    "PartitionArchiver",
    "PartitionDropFailed",
    "archive_expired_partitions",
    "archive_lock",
    "export_status",
    "verify_archive",
]
