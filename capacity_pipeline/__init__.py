"""capacity_pipeline: WhaleFall capacity aggregation as a Dagster code location."""
