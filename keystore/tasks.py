"""Key store maintenance tasks."""

from __future__ import annotations

from celery import shared_task

from keystore.lifecycle import scan_expiry


@shared_task(name="keystore.scan_key_expiry", acks_late=True, ignore_result=True)
def scan_key_expiry() -> dict[str, list[str]]:
    return scan_expiry()
