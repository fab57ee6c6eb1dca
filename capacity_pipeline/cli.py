"""The `capacity-pipeline` command line: argv in, one domain call, JSON or a table out.

Bad input and failures end with one line on stderr and a non-zero exit code (2 for bad input,
1 for a failed run); the database URL's password never appears in output. Long work draws a
progress bar on stderr when stderr is a terminal, and nothing otherwise (pipes, logs, tests).
The commands that need the pipeline extra (pandas, Dagster) import it only when they run, so the
API-only install keeps `init-db`, `aggregate`, `request` and `serve-api`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import date, timedelta
from pathlib import Path
from typing import Any, NoReturn

from sqlalchemy import Engine, text
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError, OperationalError, ProgrammingError

from capacity_pipeline.domain import constants as c
from capacity_pipeline.domain.aggregation.engine import AggregationAborted, Batch, aggregate_period
from capacity_pipeline.domain.forecast.compute import compute_forecasts
from capacity_pipeline.domain.forecast.limits import list_limits, set_limit, unset_limit
from capacity_pipeline.domain.forecast.model import ForecastRow, InvalidForecastInput
from capacity_pipeline.domain.forecast.store import read_forecasts
from capacity_pipeline.domain.model import AggregationReport, InvalidScope, Level, Scope
from capacity_pipeline.domain.periods import PeriodType, Window, china_today, window_containing
from capacity_pipeline.domain.run_center.triggers import effective_period, request_current_aggregation
from capacity_pipeline.domain.samples.instances import list_active_instances
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


class _HelpFormatter(argparse.HelpFormatter):
    """Every option's help ends with its default, unless the help already says what it is."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        help_text = action.help or ""
        shown = action.default not in (None, False, argparse.SUPPRESS) and action.option_strings
        if shown and "default" not in help_text:
            help_text += " (default: %(default)s)"
        return help_text


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _HelpFormatter)  # every subcommand too
        super().__init__(*args, **kwargs)

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
        metavar="URL",
        help="WhaleFall's database URL, postgresql:// or sqlite:/// (default: $WHALEFALL_DATABASE_URL)",
    )
    for name, option in _TIMEOUT_OPTIONS.items():
        setting = SETTINGS[name]
        database.add_argument(
            option,
            dest=name,
            type=_setting_type(name),
            default=None,
            metavar="SECONDS",
            help=f"{setting.meaning.rstrip('.')} (default: ${setting.env} or {setting.default})",
        )

    commands.add_parser(
        "init-db",
        parents=[database],
        help="create the missing tables (never alters existing ones); a SQLite file is created",
    )

    aggregate = commands.add_parser(
        "aggregate",
        parents=[database],
        help="aggregate the period of a type that contains a date, or every period of a range of dates",
        description="Writes WhaleFall's aggregation rows directly, set-based in the database: no Dagster run and "
        "no run-center TaskRun is made (use the Dagster jobs or the API for those).",
    )
    aggregate.add_argument(
        "--period", required=True, choices=[p.value for p in PeriodType], help="the period type to aggregate"
    )
    when = aggregate.add_mutually_exclusive_group(required=True)
    when.add_argument(
        "--date",
        type=_iso_date,
        metavar="YYYY-MM-DD",
        help="the one period that contains this day (required, or --from and --to)",
    )
    when.add_argument(
        "--from",
        dest="from_date",
        type=_iso_date,
        metavar="YYYY-MM-DD",
        help="the first period of a range, the one containing this day (required with --to, instead of --date)",
    )
    aggregate.add_argument(
        "--to",
        dest="to_date",
        type=_iso_date,
        metavar="YYYY-MM-DD",
        help="the last period of the range, the one containing this day (required with --from)",
    )
    aggregate.add_argument(
        "--scope", default=Scope.ALL.value, choices=[s.value for s in Scope], help="which levels to write"
    )
    aggregate.add_argument(
        "--batch-size",
        type=_setting_type("batch_size"),
        default=None,
        metavar="N",
        help=f"instances per batch (default: ${SETTINGS['batch_size'].env} or {SETTINGS['batch_size'].default})",
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
    generate.add_argument("--instances", type=_positive_int, default=20, metavar="N", help="how many instances")
    generate.add_argument("--databases", type=_positive_int, default=10, metavar="N", help="databases per instance")
    generate.add_argument(
        "--days", type=_positive_int, default=120, metavar="N", help="days of samples, ending at --end-date"
    )
    generate.add_argument(
        "--end-date", type=_iso_date, metavar="YYYY-MM-DD", help="the last day (default: today, Asia/Shanghai)"
    )
    generate.add_argument("--seed", type=int, default=42, help="the random seed: the same seed, the same rows")

    trigger = commands.add_parser(
        "request",
        parents=[database],
        help="request a current-period aggregation, as the API does (a running Dagster daemon carries it out)",
    )
    trigger.add_argument("--scope", default="all", help="all, database or instance")
    trigger.add_argument(
        "--period",
        default=PeriodType.DAILY.value,
        choices=[p.value for p in PeriodType],
        help="the period whose current window runs (daily is WhaleFall's button)",
    )
    trigger.add_argument(
        "--created-by",
        type=int,
        default=None,
        metavar="USER_ID",
        help="the requesting user's id (default: none, as a system request)",
    )

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

    serve_api.add_argument("--host", default="127.0.0.1", help="the address to listen on")
    serve_api.add_argument("--port", type=port_number, default=8080, help="the TCP port, 1..65535")

    forecast = commands.add_parser(
        "forecast", parents=[database], help="compute, store and print capacity forecasts (docs/forecasts.md)"
    )
    forecast.add_argument("--as-of", type=_iso_date, help="YYYY-MM-DD, not after today (default: China today)")
    forecast.add_argument("--level", choices=[level.value for level in _FORECAST_LEVELS], help="default: both")
    forecast.add_argument(
        "--instance", type=_positive_int, help="one instance's forecasts only (default: every instance)"
    )
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
    limit_set.add_argument("--note", help="why, or where the number comes from (default: none)")
    limit_set.add_argument("--updated-by", type=_positive_int, help="the WhaleFall user id setting it (default: none)")
    limit_list = limit_commands.add_parser("list", parents=[database], help="list the limits")
    limit_list.add_argument(
        "--instance", type=_positive_int, help="one instance's limits only (default: every instance)"
    )
    limit_list.add_argument("--format", choices=["table", "json"], default="table", help="default: table")

    demo = commands.add_parser(
        "demo",
        help="an operator's day on SQLite: seed, observe, run the nightly and the current-period jobs, show results",
    )
    demo.add_argument(
        "--folder", type=Path, default=Path(".demo"), help="where the demo database and Dagster home go (kept)"
    )
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
    if is_file and create and not Path(database).parent.is_dir():
        folder = Path(database).parent
        raise UsageError(f"SQLite file {database}: the folder {folder} does not exist (create it first)")
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
    windows = _windows(period, args)
    corrected = settings.corrected_quarter if args.corrected_quarter is None else True
    engine = _engine(args, settings)
    reports: list[AggregationReport] = []
    with _progress("windows" if len(windows) > 1 else "batches", f"{period.value} aggregation") as bar:

        def after_batch(batch: Batch) -> None:
            if bar is not None:
                bar.total = len(windows) * batch.total  # known once the instances are listed
                bar.update(1)

        for window in windows:
            reports.append(
                aggregate_period(
                    engine,
                    period,
                    window,
                    scope=Scope(args.scope),
                    batch_size=args.batch_size or settings.batch_size,
                    corrected_quarter=corrected,
                    after_batch=after_batch,
                    reconnect_within=_limits(args, settings).statement_timeout,  # a server restart is survived
                )
            )
    summaries = [report.summary() for report in reports]
    # One window prints its summary; a range prints the list of them, in period order.
    print(json.dumps(summaries[0] if args.date else summaries, ensure_ascii=False, indent=2))
    failed = [outcome for report in reports for outcome in report.failures]
    if failed:
        total = sum(report.instances_total for report in reports)
        first = failed[0]
        where = f" over {len(reports)} windows" if len(reports) > 1 else ""
        raise RunFailed(
            f"{len(failed)} of {total} instances failed{where} (first: instance {first.instance.id}: {first.error})"
        )
    return 0


def _windows(period: PeriodType, args: argparse.Namespace) -> list[Window]:
    """The windows `--date`, or `--from` and `--to`, name; none that begins after today."""
    today = china_today()
    first, last = (args.date, args.date) if args.date else (args.from_date, args.to_date)
    if args.date is None and last is None:
        raise UsageError("--from needs --to (the last day of the range)")
    if args.date is not None and args.to_date is not None:
        raise UsageError("--to goes with --from, not with --date")
    for option, day in (("--date", args.date), ("--from", args.from_date), ("--to", args.to_date)):
        if day is not None and day > today:
            raise UsageError(f"{option}: {day} is in the future; today is {today} (Asia/Shanghai)")
    if last < first:
        raise UsageError(f"--to: {last} is before --from {first}")
    windows = [window_containing(period, first)]
    while windows[-1].end < last:
        windows.append(window_containing(period, windows[-1].end + timedelta(days=1)))
    return windows


def _generate(args: argparse.Namespace, settings: Settings) -> int:
    synthetic = _pipeline_module("capacity_pipeline.domain.samples.synthetic")  # numpy and pandas
    engine = _engine(args, settings, create=True)
    create_schema(engine)
    spec = synthetic.SyntheticSpec(
        instances=args.instances,
        databases=args.databases,
        days=args.days,
        end_date=args.end_date or china_today(),
        seed=args.seed,
    )
    with _progress("days", "synthetic samples", total=spec.days) as bar:
        try:
            counts = synthetic.load_synthetic_data(engine, spec, on_day=bar.update if bar is not None else None)
        except ValueError as error:
            raise UsageError(str(error)) from None
    print(json.dumps(counts.__dict__))
    return 0


@contextmanager
def _progress(unit: str, description: str, total: int | None = None) -> Iterator[Any]:
    """A tqdm bar on stderr while stderr is a terminal; None (nothing drawn) otherwise."""
    if not sys.stderr.isatty():
        yield None
        return
    from tqdm import tqdm

    with tqdm(total=total, unit=f" {unit}", desc=description, file=sys.stderr, leave=False) as bar:
        yield bar


def _pipeline_module(name: str) -> Any:
    """A module of the `pipeline` extra; its absence is bad input that says what to install."""
    import importlib

    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as error:
        raise UsageError(
            f"this command needs {error.name}, part of the pipeline extra: pip install 'capacity_pipeline[pipeline]'"
        ) from None


def _demo(args: argparse.Namespace, settings: Settings) -> int:
    demo = _pipeline_module("capacity_pipeline.demo")  # imports Dagster, which only the demo needs

    def say(step: str) -> None:  # the steps of a minute's work, on a terminal only
        if sys.stderr.isatty():
            print(f"{PROG} demo: {step} ...", file=sys.stderr, flush=True)

    try:
        print(demo.run_demo(args.folder, settings, say=say))
    except demo.DemoFailed as error:
        raise RunFailed(str(error)) from None
    return 0


def _request(args: argparse.Namespace, settings: Settings) -> int:
    try:
        scope = Scope.from_request(args.scope)  # bad input fails before any connection
    except InvalidScope as error:
        raise UsageError(f"--scope: {error}") from None
    task_run_id = request_current_aggregation(
        _engine(args, settings), scope, created_by=args.created_by, period_type=args.period
    )
    request = {
        "task_run_id": task_run_id,
        "task_key": c.CURRENT_TASK_KEY,
        "status": "running",
        "scope": scope.value,
        "period_type": effective_period(args.period).value,
        "message": "Requested. The trigger sensor of a running Dagster daemon starts the run; "
        "the run center shows its progress under this task_run_id.",
    }
    print(json.dumps(request, indent=2))
    return 0


def _serve_api(args: argparse.Namespace, settings: Settings) -> int:
    from capacity_pipeline.api.auth import BearerTokenAuth
    from capacity_pipeline.api.server import (
        BindError,
        bind,
        configure_logging,
        create_app,
        run,
        stop_on_sigint_and_sigterm,
    )

    stop_on_sigint_and_sigterm()  # whatever this process inherited (a background job: SIGINT ignored)
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
