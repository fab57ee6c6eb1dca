"""WhaleFall's run center: task_runs / task_run_items, their JSON, triggers, claims, worker watch."""
