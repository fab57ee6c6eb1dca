"""The `capacity-pipeline` command line: argv in, one domain call, JSON or a table out.

Bad input and failures end with one line on stderr and a non-zero exit code (2 for bad input,
1 for a failed run); the database URL's password never appears in output.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from datetime import date
from pathlib import Path
from typing import Any, NoReturn

from sqlalchemy import Engine, text
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError, OperationalError, ProgrammingError

from capacity_pipeline.domain.aggregation.engine import AggregationAborted, aggregate_period
from capacity_pipeline.domain.forecast.compute import compute_forecasts
from capacity_pipeline.domain.forecast.limits import list_limits, set_limit, unset_limit
from capacity_pipeline.domain.forecast.model import ForecastRow, InvalidForecastInput
from capacity_pipeline.domain.forecast.store import read_forecasts
from capacity_pipeline.domain.model import InvalidScope, Level, Outcome, Scope
from capacity_pipeline.domain.periods import PeriodType, china_today, window_containing
from capacity_pipeline.domain.run_center.triggers import request_current_aggregation
from capacity_pipeline.domain.samples.instances import list_active_instances
from capacity_pipeline.domain.samples.synthetic import SyntheticSpec, load_synthetic_data
from capacity_pipeline.domain.storage.database import (
    DATABASE_URL_ENV,
    DatabaseConfigError,
    make_engine,
    normalise_url,
    safe_url,
)
from capacity_pipeline.domain.storage.dialects import ConnectionLimits, first_line
from capacity_pipeline.domain.storage.tables import create_schema
from capacity_pipeline.settings import SETTINGS, SettingError, Settings

PROG = "capacity-pipeline"
# Timeout settings every command that connects takes as options (seconds).
_TIMEOUT_OPTIONS = {
    "connect_timeout_seconds": "--connect-timeout",
    "statement_timeout_seconds": "--statement-timeout",
    "lock_timeout_seconds": "--lock-timeout",
}


class UsageError(Exception):
    """Bad input: exit code 2."""


class RunFailed(Exception):
    """The run happened but did not succeed: exit code 1."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One line, naming the argument and (for choices) the allowed values.
        self.exit(2, f"{self.prog}: error: {message}\n")


def _iso_date(value: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a date; expected YYYY-MM-DD") from None


def _positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise argparse.ArgumentTypeError(f"{value!r} is not a positive whole number")
    return number


def _setting_type(name: str) -> Callable[[str], Any]:
    """An option that overrides a setting takes what the setting accepts."""
    setting = SETTINGS[name]

    def parse(value: str) -> Any:
        try:
            return setting.parse(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{value!r} is not {setting.accepts}") from None

    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="WhaleFall capacity aggregation.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    database = _Parser(add_help=False)
    database.add_argument(
        "--db-url",
        help="WhaleFall database URL (default: $WHALEFALL_DATABASE_URL); postgresql:// or sqlite:///",
    )
    for name, option in _TIMEOUT_OPTIONS.items():
        setting = SETTINGS[name]
        database.add_argument(
            option,
            dest=name,
            type=_setting_type(name),
            default=None,
            help=f"{setting.meaning} (default: ${setting.env} or {setting.default})",
        )

    commands.add_parser("init-db", parents=[database], help="create the missing tables (never alters existing ones)")

    aggregate = commands.add_parser(
        "aggregate", parents=[database], help="aggregate the period of a type that contains a date"
    )
    aggregate.add_argument("--period", required=True, choices=[p.value for p in PeriodType])
    aggregate.add_argument("--date", required=True, type=_iso_date, help="YYYY-MM-DD")
    aggregate.add_argument("--scope", default=Scope.ALL.value, choices=[s.value for s in Scope])
    aggregate.add_argument(
        "--batch-size",
        type=_setting_type("batch_size"),
        default=None,
        help=f"default: ${SETTINGS['batch_size'].env} or {SETTINGS['batch_size'].default}",
    )
    aggregate.add_argument(
        "--corrected-quarter",
        action="store_true",
        default=None,
        help="compare quarters with the whole previous quarter (compat Q1 fix; default: WhaleFall's "
        "two-month window, or $CAPACITY_CORRECTED_PREVIOUS_QUARTER)",
    )

    generate = commands.add_parser(
        "generate", parents=[database], help="load synthetic capacity data into an empty database"
    )
    generate.add_argument("--instances", type=_positive_int, default=20)
    generate.add_argument("--databases", type=_positive_int, default=10)
    generate.add_argument("--days", type=_positive_int, default=120)
    generate.add_argument("--end-date", type=_iso_date, help="last day (default: China today)")
    generate.add_argument("--seed", type=int, default=42)

    trigger = commands.add_parser(
        "request", parents=[database], help="request a current-period aggregation, as the API does"
    )
    trigger.add_argument("--scope", default="all", help="all, database or instance (default: all)")
    trigger.add_argument(
        "--period",
        default=PeriodType.DAILY.value,
        choices=[p.value for p in PeriodType],
        help="the period whose current window runs (default: daily, as WhaleFall's button)",
    )
    trigger.add_argument("--created-by", type=int, default=None, help="the requesting user's id")

    serve_api = commands.add_parser(
        "serve-api", parents=[database], help="serve the HTTP API with bearer tokens ($CAPACITY_API_TOKENS)"
    )

    def port_number(value: str) -> int:
        """A TCP port, 1..65535; anything else would wrap around or pick a random port."""
        try:
            number = int(value)
        except ValueError:
            number = 0
        if not 1 <= number <= 65535:
            raise argparse.ArgumentTypeError(f"{value!r} is not a port number; allowed: 1..65535")
        return number

    serve_api.add_argument("--host", default="127.0.0.1")
    serve_api.add_argument("--port", type=port_number, default=8080, help="1..65535 (default: 8080)")

    forecast = commands.add_parser(
        "forecast", parents=[database], help="compute, store and print capacity forecasts (docs/forecasts.md)"
    )
    forecast.add_argument("--as-of", type=_iso_date, help="YYYY-MM-DD, not after today (default: China today)")
    forecast.add_argument("--level", choices=[level.value for level in _FORECAST_LEVELS], help="default: both")
    forecast.add_argument("--instance", type=_positive_int, help="one instance's forecasts only")
    forecast.add_argument(
        "--horizons",
        type=_setting_type("forecast_horizons"),
        help=f"days, comma separated (default: ${SETTINGS['forecast_horizons'].env} or 30,90,180)",
    )
    forecast.add_argument("--format", choices=["table", "json"], default="table", help="default: table")

    limits = commands.add_parser("limits", help="the capacity limits the forecasts compare with")
    limit_commands = limits.add_subparsers(dest="limits_command", required=True, parser_class=_Parser)
    limit_set = limit_commands.add_parser("set", parents=[database], help="set an instance's or a database's limit")
    limit_unset = limit_commands.add_parser("unset", parents=[database], help="remove a limit")
    for command in (limit_set, limit_unset):
        command.add_argument("--instance", type=_positive_int, required=True, help="the instance id")
        command.add_argument("--database", help="a database of the instance (default: the instance itself)")
    limit_set.add_argument("--mb", type=_positive_int, required=True, help="the limit in MB, a whole number >= 1")
    limit_set.add_argument("--note", help="why, or where the number comes from")
    limit_set.add_argument("--updated-by", type=_positive_int, help="the WhaleFall user id setting it")
    limit_list = limit_commands.add_parser("list", parents=[database], help="list the limits")
    limit_list.add_argument("--instance", type=_positive_int, help="one instance's limits only")
    limit_list.add_argument("--format", choices=["table", "json"], default="table", help="default: table")

    demo = commands.add_parser("demo", help="seed SQLite, materialize every period through Dagster, show the results")
    demo.add_argument("--folder", type=Path, default=Path(".demo"), help="where the demo database and Dagster home go")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    command = " ".join(filter(None, (args.command, getattr(args, "limits_command", None))))
    try:
        settings = Settings.from_env()  # read once; the options override what they name
        return _COMMANDS[args.command](args, settings)
    except InvalidForecastInput as error:
        print(f"{PROG} {command}: error: {_as_option(str(error))}", file=sys.stderr)
        return 2
    except (UsageError, DatabaseConfigError, SettingError) as error:
        print(f"{PROG} {command}: error: {error}", file=sys.stderr)
        return 2
    except AggregationAborted as error:
        print(f"{PROG} {command}: failed: {error}", file=sys.stderr)
        return 1
    except RunFailed as error:
        print(f"{PROG} {command}: failed: {error}", file=sys.stderr)
        return 1
    except DBAPIError as error:
        print(f"{PROG} {command}: failed: {_database_error(error, args)}", file=sys.stderr)
        return 1


def _database_error(error: DBAPIError, args: argparse.Namespace) -> str:
    detail = first_line(error)
    missing_table = "no such table" in detail or (
        isinstance(error, ProgrammingError) and "relation" in detail and "does not exist" in detail
    )
    if missing_table:
        return f"{detail} (run '{PROG} init-db' first)"
    if isinstance(error, OperationalError):
        url = getattr(args, "db_url", None) or os.environ.get(DATABASE_URL_ENV, "")
        return f"cannot use {safe_url(url) if url else 'the database'}: {detail}"
    return detail


def _database_url(explicit: str | None, settings: Settings, option: str = "--db-url") -> URL:
    """The URL given through `option`, else the setting WHALEFALL_DATABASE_URL."""
    if explicit:
        return normalise_url(explicit, source=option)
    raw = settings.url
    if raw is None:
        raise DatabaseConfigError(
            f"{DATABASE_URL_ENV} is not set: give the WhaleFall database URL "
            f"(for example postgresql://user@127.0.0.1:5432/whalefall) or pass {option}"
        )
    return normalise_url(raw)


def _engine(args: argparse.Namespace, settings: Settings, *, create: bool = False) -> Engine:
    """The engine for --db-url / WHALEFALL_DATABASE_URL, checked to answer.

    Only commands that create a schema may create a new SQLite file; the others refuse a path
    that does not exist instead of aggregating an empty database.
    """
    url = _database_url(args.db_url, settings)
    database = url.database or ""
    is_file = url.get_backend_name() == "sqlite" and database not in ("", ":memory:")
    if is_file and not create and not Path(database).exists():
        raise UsageError(f"SQLite file {database} does not exist (run '{PROG} init-db' to create it)")
    engine = make_engine(url, _limits(args, settings))
    with engine.connect() as connection:  # fail here, clearly, when the database is unreachable
        connection.execute(text("SELECT 1"))
    return engine


def _init_db(args: argparse.Namespace, settings: Settings) -> int:
    created = create_schema(_engine(args, settings, create=True))
    print(json.dumps({"created_tables": created}, ensure_ascii=False))
    return 0


def _limits(args: argparse.Namespace, settings: Settings) -> ConnectionLimits:
    """Each timeout from its option, else from its setting (environment or default)."""
    seconds = {name: getattr(args, name) or getattr(settings, name) for name in _TIMEOUT_OPTIONS}
    return ConnectionLimits(
        connect_timeout=seconds["connect_timeout_seconds"],
        statement_timeout=seconds["statement_timeout_seconds"],
        lock_timeout=seconds["lock_timeout_seconds"],
    )


def _aggregate(args: argparse.Namespace, settings: Settings) -> int:
    period = PeriodType(args.period)
    corrected = settings.corrected_quarter if args.corrected_quarter is None else True
    report = aggregate_period(
        _engine(args, settings),
        period,
        window_containing(period, args.date),
        scope=Scope(args.scope),
        batch_size=args.batch_size or settings.batch_size,
        corrected_quarter=corrected,
    )
    print(json.dumps(report.summary(), ensure_ascii=False, indent=2))
    failed = report.count(Outcome.FAILED)
    if failed:
        first = next(o for o in report.outcomes if o.error is not None)
        raise RunFailed(
            f"{failed} of {report.instances_total} instances failed "
            f"(first: instance {first.instance.id}: {first.error})"
        )
    return 0


def _generate(args: argparse.Namespace, settings: Settings) -> int:
    engine = _engine(args, settings, create=True)
    create_schema(engine)
    spec = SyntheticSpec(
        instances=args.instances,
        databases=args.databases,
        days=args.days,
        end_date=args.end_date or china_today(),
        seed=args.seed,
    )
    try:
        counts = load_synthetic_data(engine, spec)
    except ValueError as error:
        raise UsageError(str(error)) from None
    print(json.dumps(counts.__dict__))
    return 0


def _demo(args: argparse.Namespace, settings: Settings) -> int:
    from capacity_pipeline.demo import run_demo  # imports Dagster, which only the demo needs

    print(run_demo(args.folder, settings))
    return 0


def _request(args: argparse.Namespace, settings: Settings) -> int:
    try:
        scope = Scope.from_request(args.scope)  # bad input fails before any connection
    except InvalidScope as error:
        raise UsageError(f"--scope: {error}") from None
    print(
        request_current_aggregation(_engine(args, settings), scope, created_by=args.created_by, period_type=args.period)
    )
    return 0


def _serve_api(args: argparse.Namespace, settings: Settings) -> int:
    from capacity_pipeline.api.auth import BearerTokenAuth
    from capacity_pipeline.api.server import BindError, bind, configure_logging, create_app, run

    try:
        auth = BearerTokenAuth.from_settings(settings)
    except ValueError as error:
        raise UsageError(str(error)) from None
    engine = _engine(args, settings)
    configure_logging()  # the access log and the cancels go to stderr
    try:
        server = bind(create_app(engine, auth), args.host, args.port)  # before saying "serving"
    except BindError as error:
        raise RunFailed(str(error)) from None
    host = f"[{args.host}]" if ":" in args.host else args.host
    print(f"serving the capacity API on http://{host}:{args.port}", flush=True)
    run(server)
    return 0


_FORECAST_LEVELS = (Level.INSTANCE, Level.DATABASE)
# The domain's field names as the options that set them, for one-line errors that name the option.
_OPTIONS_OF_FIELDS = {
    "instance_id": "--instance",
    "database_name": "--database",
    "limit_mb": "--mb",
    "note": "--note",
    "updated_by": "--updated-by",
    "horizons": "--horizons",
}


def _as_option(message: str) -> str:
    field, _, rest = message.partition(":")
    return f"{_OPTIONS_OF_FIELDS[field]}:{rest}" if field in _OPTIONS_OF_FIELDS and rest else message


def _forecast(args: argparse.Namespace, settings: Settings) -> int:
    today = china_today()
    as_of = args.as_of or today
    if as_of > today:
        raise UsageError(f"--as-of: {as_of.isoformat()} is after today ({today.isoformat()} in Asia/Shanghai)")
    options = settings.forecast_options(**({"horizons": args.horizons} if args.horizons else {}))
    levels = [Level(args.level)] if args.level else list(_FORECAST_LEVELS)
    engine = _engine(args, settings)
    instance_ids = None
    if args.instance is not None:
        if args.instance not in {instance.id for instance in list_active_instances(engine)}:
            raise UsageError(f"--instance: no active instance {args.instance}")
        instance_ids = [args.instance]
    for level in levels:
        compute_forecasts(engine, level, as_of, options, instance_ids=instance_ids)
    rows = (
        row for level in levels for row in read_forecasts(engine, level=level, instance_id=args.instance, as_of=as_of)
    )
    if args.format == "json":
        _print_json_array(row.as_json() for row in rows)
    else:
        _print_table(_FORECAST_COLUMNS, (_forecast_cells(row) for row in rows))
    return 0


_FORECAST_COLUMNS = (
    "level", "instance", "database", "horizon", "p10_mb", "p50_mb", "p90_mb", "growth/day", "limit_mb",
    "days_p10", "days_p50", "days_p90", "quality", "change_point", "samples",
)  # fmt: skip


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.2f}"
    return str(value)


def _forecast_cells(row: ForecastRow) -> list[str]:
    return [
        _cell(value)
        for value in (
            row.level.value, row.instance_id, row.database_name, row.horizon_days, row.p10_mb, row.p50_mb,
            row.p90_mb, row.growth_mb_per_day, row.limit_mb, row.days_to_limit_p10, row.days_to_limit_p50,
            row.days_to_limit_p90, row.quality.value, row.change_point_date, row.samples_used,
        )
    ]  # fmt: skip


def _print_json_array(items: Iterator[dict[str, Any]]) -> None:
    """One JSON array, written element by element (a fleet's forecasts need not all be in memory)."""
    sys.stdout.write("[")
    for index, item in enumerate(items):
        sys.stdout.write(("," if index else "") + "\n" + json.dumps(item, ensure_ascii=False))
    sys.stdout.write("\n]\n")


def _print_table(columns: Sequence[str], rows: Iterator[list[str]]) -> None:
    """A plain text table; columns as wide as their widest cell (so the rows are read first)."""
    cells = [list(columns), *rows]
    widths = [max(len(row[index]) for row in cells) for index in range(len(columns))]
    for row in cells:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


def _limits_command(args: argparse.Namespace, settings: Settings) -> int:
    engine = _engine(args, settings)
    if args.limits_command == "set":
        limit = set_limit(engine, args.instance, args.database, args.mb, note=args.note, updated_by=args.updated_by)
        print(json.dumps(limit.as_json(), ensure_ascii=False))
    elif args.limits_command == "unset":
        removed = unset_limit(engine, args.instance, args.database)
        print(json.dumps({"instance_id": args.instance, "database_name": args.database, "removed": removed}))
    else:
        limits = list_limits(engine, args.instance)
        if args.format == "json":
            print(json.dumps([limit.as_json() for limit in limits], ensure_ascii=False))
        else:
            columns = ("instance", "database", "limit_mb", "note", "updated_by", "updated_at")
            _print_table(
                columns,
                (
                    [_cell(v) for v in (x.instance_id, x.database_name, x.limit_mb, x.note, x.updated_by)]
                    + [x.updated_at.isoformat(timespec="seconds")]
                    for x in limits
                ),
            )
    return 0


_COMMANDS = {
    "init-db": _init_db,
    "aggregate": _aggregate,
    "generate": _generate,
    "request": _request,
    "serve-api": _serve_api,
    "demo": _demo,
    "forecast": _forecast,
    "limits": _limits_command,
}


if __name__ == "__main__":
    raise SystemExit(main())
