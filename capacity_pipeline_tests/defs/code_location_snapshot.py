"""What operators see of the code location, as plain data (the snapshot test compares it)."""

from __future__ import annotations

from typing import Any

import dagster as dg


def describe(definitions: dg.Definitions) -> dict[str, Any]:
    graph = definitions.resolve_asset_graph()
    assets = {}
    for key in sorted(graph.get_all_asset_keys(), key=lambda k: k.to_user_string()):
        node = graph.get(key)
        partitions = node.partitions_def
        assets[key.to_user_string()] = {
            "kind": "observable source" if node.is_observable else "materializable",
            "group": node.group_name,
            "partitions": _partitions(partitions),
            "deps": sorted(parent.to_user_string() for parent in node.parent_keys),
            "checks": sorted(check.name for check in node.check_keys),
            "automation": node.automation_condition.get_label() if node.automation_condition else None,
        }
    jobs = {}
    for job in definitions.resolve_all_job_defs():
        if job.name.startswith("__"):
            continue
        selected = sorted(key.to_user_string() for key in job.asset_layer.selected_asset_keys)
        jobs[job.name] = {"assets": selected, "ops": sorted(node.name for node in job.nodes) if not selected else []}
    schedules = {
        schedule.name: {
            "job": schedule.job_name,
            "cron": schedule.cron_schedule,
            "timezone": schedule.execution_timezone,
            "default": schedule.default_status.value,
        }
        for schedule in definitions.schedules or []
    }
    sensors = {sensor.name: {"default": sensor.default_status.value} for sensor in definitions.sensors or []}
    return {"assets": assets, "jobs": jobs, "schedules": schedules, "sensors": sensors}


def _partitions(partitions: dg.PartitionsDefinition | None) -> str | None:
    if partitions is None:
        return None
    assert isinstance(partitions, dg.TimeWindowPartitionsDefinition)
    start = partitions.start.date()
    return f"{partitions.cron_schedule} {partitions.timezone} from {start} end_offset={partitions.end_offset}"


if __name__ == "__main__":  # regenerate: the command in test_snapshot.py, from the repository root
    import json
    import warnings

    warnings.filterwarnings("ignore")
    from capacity_pipeline.defs.definitions import build_defs
    from capacity_pipeline.settings import Settings

    print(json.dumps(describe(build_defs(Settings())), indent=2, ensure_ascii=False))
