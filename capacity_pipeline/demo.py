"""The demo on the embedded default: SQLite for WhaleFall's tables and for Dagster's storage.

It seeds synthetic data, materializes every period's aggregation assets (with their checks)
through a real Dagster instance under `<folder>/dagster_home`, and prints what each run did.
`make dev` then serves the Dagster UI over the same two files.
"""

from __future__ import annotations

import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

import dagster as dg

from capacity_pipeline.domain.aggregation.top_growth import top_growth
from capacity_pipeline.domain.model import Level
from capacity_pipeline.domain.periods import PeriodType, china_today, last_window, window_containing
from capacity_pipeline.domain.samples.synthetic import SyntheticSpec, load_synthetic_data
from capacity_pipeline.domain.storage.database import make_engine
from capacity_pipeline.domain.storage.tables import create_schema
from capacity_pipeline.settings import Settings

DEMO_SPEC = {"instances": 12, "databases": 6, "days": 200, "seed": 7}
# The runs' own event logs stay in the Dagster instance (see them with `make dev`), not on the terminal.
_QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
_DAGSTER_YAML = "# Demo instance: SQLite storage under this folder (Dagster's default).\ntelemetry:\n  enabled: false\n"


@dataclass(frozen=True)
class DemoPaths:
    folder: Path

    @property
    def database(self) -> Path:
        return self.folder / "whalefall-demo.db"

    @property
    def dagster_home(self) -> Path:
        return self.folder / "dagster_home"

    @property
    def database_url(self) -> str:
        return f"sqlite:///{self.database.resolve()}"


def run_demo(folder: Path, settings: Settings) -> str:
    """Build the demo from scratch in `folder` and return the text to print."""
    warnings.filterwarnings("ignore", category=dg.BetaWarning)
    warnings.filterwarnings("ignore", category=dg.PreviewWarning)
    from capacity_pipeline.defs.aggregation.assets import build_aggregation_assets
    from capacity_pipeline.defs.partitions import key_for_window, partitions_by_period
    from capacity_pipeline.defs.resources import WhaleFallDatabase

    aggregation_assets = build_aggregation_assets(
        partitions_by_period(settings.partitions_start), automate_current_periods=settings.automate_current_periods
    )

    paths = DemoPaths(folder)
    _reset(paths)
    engine = make_engine(paths.database_url)
    create_schema(engine)
    today = china_today()
    counts = load_synthetic_data(engine, SyntheticSpec(end_date=today, **DEMO_SPEC))
    lines = [
        f"Seeded {paths.database}: {counts.instances} instances, {counts.database_size_stats} database "
        f"samples and {counts.instance_size_stats} instance samples up to {today} (Asia/Shanghai).",
        f"Dagster instance: {paths.dagster_home} (SQLite storage).",
        "",
    ]
    windows = [(PeriodType.DAILY, window_containing(PeriodType.DAILY, today))]
    windows += [(period, last_window(period, today)) for period in PeriodType]
    rows = [("period", "partition", "window", "compared with", "instances", "db rows", "inst rows", "checks")]
    with dg.DagsterInstance.from_config(str(paths.dagster_home)) as instance:
        for period, window in windows:
            assets = [aggregation_assets[level, period] for level in Level]  # their checks come with them
            result = dg.materialize(
                assets,
                partition_key=key_for_window(window),
                instance=instance,
                run_config=_QUIET,
                resources={"whalefall": WhaleFallDatabase(url=paths.database_url)},
            )
            metadata = {
                level: result.asset_materializations_for_node(assets[i].op.name)[0].metadata
                for i, level in enumerate(Level)
            }
            evaluations = result.get_asset_check_evaluations()
            instance_metadata = metadata[Level.INSTANCE]
            rows.append(
                (
                    period.value,
                    key_for_window(window),
                    str(window),
                    instance_metadata["previous_window"].value,
                    f"{instance_metadata['instances_processed'].value} ok, "
                    f"{instance_metadata['instances_failed'].value} failed",
                    str(metadata[Level.DATABASE]["rows_written"].value),
                    str(instance_metadata["rows_written"].value),
                    f"{sum(e.passed for e in evaluations)}/{len(evaluations)} passed",
                )
            )
    lines.append(_table(rows))
    month = last_window(PeriodType.MONTHLY, today)
    for level in Level:
        lines.append(f"\n{level.value.capitalize()}s that grew most in {month}:")
        frame = top_growth(engine, level, PeriodType.MONTHLY.value, month.start, limit=5)
        lines.append(frame.to_string(index=False))
    engine.dispose()
    lines.append("\nOpen the Dagster UI on this data with: make dev  (http://127.0.0.1:3000)")
    return "\n".join(lines)


def _reset(paths: DemoPaths) -> None:
    paths.folder.mkdir(parents=True, exist_ok=True)
    for suffix in ("", "-wal", "-shm"):
        Path(f"{paths.database}{suffix}").unlink(missing_ok=True)
    if paths.dagster_home.exists():
        shutil.rmtree(paths.dagster_home)
    paths.dagster_home.mkdir()
    (paths.dagster_home / "dagster.yaml").write_text(_DAGSTER_YAML)


def _table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    rendered = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows]
    rendered.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(rendered)
