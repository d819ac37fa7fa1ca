"""Shared plumbing for benchmarks: Django set-up, a scratch database, and the ratio report."""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import psycopg
from psycopg import sql


def setup_django() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "courier_site.settings")
    import django

    django.setup()
    # paramiko's INFO lines (each connect, log-in and channel) would bury the figures.
    logging.getLogger("paramiko").setLevel(logging.WARNING)


@contextmanager
def scratch_database() -> Iterator[str]:
    """A freshly migrated database of its own, so benchmark rows never land in real data.

    Django's default connection points at it for the duration; it is dropped afterwards.
    """
    from django.conf import settings
    from django.db import connection

    from courier_site import partitions, sqlmigrations
    from courier_site.db import conninfo_for

    admin_conninfo = conninfo_for()
    name = f"courier_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin_conninfo, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    original = settings.DATABASES["default"]["NAME"]
    try:
        connection.close()
        settings.DATABASES["default"]["NAME"] = name
        connection.settings_dict["NAME"] = name
        sqlmigrations.apply(conninfo_for(), settings.COURIER_SQL_DIR)
        partitions.ensure_partitions()
        yield name
    finally:
        connection.close()
        settings.DATABASES["default"]["NAME"] = original
        connection.settings_dict["NAME"] = original
        with psycopg.connect(admin_conninfo, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@dataclass
class Figure:
    """One measured figure, compared with the anchor measured in the same run."""

    label: str
    measured: float
    unit: str
    anchor_label: str
    anchor: float
    target_ratio: float | None = None
    target_absolute: float | None = None
    higher_is_better: bool = True

    @property
    def ratio(self) -> float:
        if self.higher_is_better:
            return self.measured / self.anchor if self.anchor else float("inf")
        return self.anchor / self.measured if self.measured else float("inf")

    @property
    def met(self) -> bool:
        ok = True
        if self.target_ratio is not None:
            ok &= self.ratio >= self.target_ratio
        if self.target_absolute is not None:
            ok &= (
                (self.measured >= self.target_absolute)
                if self.higher_is_better
                else (self.measured <= self.target_absolute)
            )
        return ok


@dataclass
class Report:
    title: str
    figures: list[Figure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def met(self) -> bool:
        return all(figure.met for figure in self.figures)

    def print(self) -> None:
        print(f"\n== {self.title}")
        for figure in self.figures:
            targets = []
            if figure.target_ratio is not None:
                targets.append(f"ratio >= {figure.target_ratio:g}")
            if figure.target_absolute is not None:
                sign = ">=" if figure.higher_is_better else "<="
                targets.append(f"{sign} {figure.target_absolute:g} {figure.unit}")
            print(
                f"  {figure.label}: {_number(figure.measured)} {figure.unit}"
                f" | anchor {figure.anchor_label}: {_number(figure.anchor)} {figure.unit}"
                f" | ratio {figure.ratio:,.2f}x"
                + (
                    f" | target {' and '.join(targets)}: {'MET' if figure.met else 'NOT MET'}"
                    if targets
                    else " | no target"
                )
            )
        for note in self.notes:
            print(f"  note: {note}")


def _number(value: float) -> str:
    return f"{value:,.3f}" if abs(value) < 10 else f"{value:,.1f}"
