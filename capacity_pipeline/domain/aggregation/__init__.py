"""WhaleFall's aggregation: the level SQL, the batching engine, the data-quality checks."""
