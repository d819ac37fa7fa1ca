"""Courier site: configuration and platform plumbing (settings, Celery, SQL migrations, health)."""

from __future__ import annotations

from courier_site.celery import app as celery_app

__all__ = ["celery_app"]
