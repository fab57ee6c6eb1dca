"""The domain layer: WhaleFall tables, periods, aggregation SQL, run center. No Dagster, no Flask."""
