"""The dialect seam is a contract: a dialect that leaves part of it out cannot be used."""

from __future__ import annotations

import pytest

from capacity_pipeline.domain.storage.dialects import SqlDialect


def test_a_dialect_missing_one_operation_cannot_be_made():
    operations = {name: (lambda self, *args: None) for name in SqlDialect.__abstractmethods__}
    del operations["create_month_partition"]
    partial = type("PartialDialect", (SqlDialect,), {"name": "partial", "partitions_by_month": False, **operations})

    with pytest.raises(TypeError, match="create_month_partition"):
        partial()
