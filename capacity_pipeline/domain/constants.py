"""Strings and values WhaleFall fixes, with the section of docs/whalefall-compatibility.md each comes from."""

from __future__ import annotations

# The status vocabulary (compat 6.1) is model.TaskStatus.

TASK_CATEGORY = "aggregation"  # compat 6.2 / 6.3
ITEM_TYPE = "instance"  # compat 6.2 step 3
TRIGGER_MANUAL, TRIGGER_SCHEDULED = "manual", "scheduled"

# compat 6.2: the manual "current period" run ({period} is always daily there; hand-made Dagster
# materializations of other periods reuse the sentences)
CURRENT_TASK_KEY = "capacity_aggregate_current"
CURRENT_TASK_NAME = "容量统计(当前周期)"
CURRENT_RESULT_URL = {
    "database": "/capacity/databases",
    "instance": "/capacity/instances",
    "all": "/capacity/instances",
}
CURRENT_MESSAGES = {
    ("database", "completed"): "实例 {name} 的 {period} 数据库聚合完成 (处理 {n} 个数据库)",
    ("database", "skipped"): "实例 {name} 在 {start} 至 {end} 没有数据库容量数据,跳过聚合",
    ("database", "failed"): "实例 {name} 的 {period} 数据库聚合失败",
    ("instance", "completed"): "实例 {name} 的 {period} 实例聚合完成 (处理 {n} 条记录)",
    ("instance", "skipped"): "实例 {name} 在 {start} 至 {end} 没有实例统计数据,跳过聚合",
    ("instance", "failed"): "实例 {name} 的 {period} 聚合失败",
}
CURRENT_OVERALL = {
    "failed": "当前周期聚合完成,但存在失败的子任务",
    "skipped": "当前周期没有可处理的数据",
    "completed": "当前周期聚合完成",
}

# compat 6.3: the nightly run
NIGHTLY_TASK_KEY = "calculate_database"
NIGHTLY_TASK_NAME = "统计数据库聚合"
NIGHTLY_RESULT_URL = "/capacity/instances"
NIGHTLY_PERIOD_MESSAGES = {
    "completed": "实例 {name} 的 {period} 聚合已更新",
    "skipped": "实例 {name} 在 {start} 到 {end} 没有统计数据,跳过聚合",
    "failed": "{period} 聚合失败: {error}",
}

# Not WhaleFall's: materializations and backfills started by hand in the Dagster UI.
MATERIALIZE_TASK_KEY = "capacity_materialize"
MATERIALIZE_TASK_NAME = "容量统计(Dagster 物化)"

# compat 6.4: metric items of the summaries
SCOPE_METRICS = (
    ("scope", "范围"),
    ("requested_period_type", "请求周期"),
    ("effective_period_type", "生效周期"),
)
NIGHTLY_METRICS = (
    ("instances_total", "实例总数", "个", "info"),
    ("instances_successful", "成功实例", "个", "success"),
    ("instances_failed", "失败实例", "个", "danger"),
    ("records_total", "聚合记录总数", "条", "info"),
)
