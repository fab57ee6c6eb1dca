"""The run center's Dagster side: run tags, the step lifecycle, hooks, the trigger sensor, the reconciler."""
