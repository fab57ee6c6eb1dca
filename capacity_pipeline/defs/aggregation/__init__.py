"""The aggregation assets, their checks and automation, and the jobs WhaleFall knows."""
