"""WhaleFall's "active instance" rule (compat 1.1), written once for SQL text and for SQLAlchemy."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ColumnElement, Connection, Engine, Table, and_, or_, select

from capacity_pipeline.domain.model import ActiveInstance
from capacity_pipeline.domain.storage.tables import tables_for


def active_instance_sql(alias: str = "") -> str:
    """The rule as a SQL condition over `instances` (optionally aliased)."""
    prefix = f"{alias}." if alias else ""
    return f"{prefix}is_active IS TRUE AND {prefix}deleted_at IS NULL"


def is_active_instance(instances: Table) -> ColumnElement[bool]:
    """The rule as a SQLAlchemy condition."""
    return and_(instances.c.is_active.is_(True), instances.c.deleted_at.is_(None))


def list_active_instances(bind: Engine | Connection, *, existing_at: datetime | None = None) -> list[ActiveInstance]:
    """Active instances in id order, one snapshot per run (compat Q20); with `existing_at`, only those
    created by then, so that every step of one run works on the same list."""
    if isinstance(bind, Engine):
        with bind.connect() as connection:
            return list_active_instances(connection, existing_at=existing_at)
    instances = tables_for(bind).tables["instances"]
    query = select(instances.c.id, instances.c.name).where(is_active_instance(instances)).order_by(instances.c.id)
    if existing_at is not None:
        query = query.where(or_(instances.c.created_at.is_(None), instances.c.created_at <= existing_at))
    return [ActiveInstance(id=row.id, name=row.name) for row in bind.execute(query)]
