"""The `poolctl` command: a thin Typer layer over the library.

Only the CLI package imports Typer and Rich, and only `run` below turns
exceptions into messages and exit codes. Every command takes the same common
options (config file, the two URLs, verbosity), added by `command()`.
"""

from __future__ import annotations

import functools
import inspect
import logging
import sys
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from poolctl.cli.output import Output, error_line, setup_logging, use_utf8_stdout
from poolctl.errors import ExitCode, PoolctlError

if TYPE_CHECKING:
    from poolctl.config import Settings
    from poolctl.sql import Database
    from poolctl.store import RedisStore

log = logging.getLogger("poolctl.cli")


class LogFormat(str, Enum):
    text = "text"
    json = "json"


app = typer.Typer(
    name="poolctl",
    help="Keep Redis LIST cache pools filled from SQL tables and hand each item to exactly one consumer.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _print_version(value: bool) -> None:
    if value:
        from poolctl import __version__

        typer.echo(f"poolctl {__version__}")
        raise typer.Exit()


@app.callback()
def _group(
    version: Annotated[
        bool, typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    # Keeps `poolctl` a group of commands when main() registers only the
    # one that runs: Typer would otherwise make a lone command the whole app.
    pass


@dataclass
class Runtime:
    """The context of one command: settings and connections (opened on first use) and its output."""

    config: Path | None = None
    redis_url: str | None = None
    database_url: str | None = None
    json_mode: bool = False
    out: Output = field(default_factory=Output)
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)  # command flags, by TOML path
    create_database: bool = False  # only `db init` may create a SQLite file
    _settings: Settings | None = None
    _store: RedisStore | None = None
    _db: Database | None = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            from poolctl.config import load_settings

            overrides = {section: dict(values) for section, values in self.overrides.items()}
            if self.redis_url is not None:
                overrides.setdefault("redis", {})["url"] = self.redis_url
            if self.database_url is not None:
                overrides.setdefault("database", {})["url"] = self.database_url
            self._settings = load_settings(self.config, **overrides)
            from poolctl.config import config_path, mask_url

            log.debug(
                "settings from %s: redis %s, database %s, pool types %s",
                config_path(self.config) or "environment and defaults", mask_url(self._settings.redis.url),
                mask_url(self._settings.database.url), ", ".join(self._settings.pools),
            )
        return self._settings

    @property
    def store(self) -> RedisStore:
        if self._store is None:
            from poolctl.store import RedisStore

            self._store = RedisStore.from_settings(self.settings)
        return self._store

    @property
    def db(self) -> Database:
        if self._db is None:
            from poolctl.sql import connect_database

            self._db = connect_database(self.settings, create=self.create_database)
        return self._db

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
        if self._store is not None:
            self._store.close()


ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="TOML config file. Default: $POOLCTL_CONFIG, else ./poolctl.toml if present.",
                 show_default=False, dir_okay=False),
]
RedisUrlOption = Annotated[
    str | None,
    typer.Option("--redis-url", help="Redis URL, e.g. redis://127.0.0.1:6379/0. Overrides POOLCTL_REDIS_URL and [redis] url.",
                 show_default=False),
]
DatabaseUrlOption = Annotated[
    str | None,
    typer.Option("--database-url", help="SQL URL: sqlite:///poolctl.db or mysql://user:pass@host:3306/db. "
                 "Overrides POOLCTL_DATABASE_URL and [database] url.", show_default=False),
]
VerboseOption = Annotated[int, typer.Option("--verbose", "-v", count=True, help="Log more: -v shows DEBUG lines.")]
QuietOption = Annotated[
    int, typer.Option("--quiet", "-q", count=True, help="Log less: -q shows only warnings and errors, -qq only errors.")
]
LogFormatOption = Annotated[
    LogFormat, typer.Option("--log-format", help="Log line format on stderr: text, or json (one object per line).")
]
# The options every command takes, which go after the command name.
COMMON_OPTIONS = frozenset(
    ["--config", "-c", "--redis-url", "--database-url", "--verbose", "-v", "--quiet", "-q", "--log-format", "--json"]
)
JsonOption = Annotated[bool, typer.Option("--json", help="Write JSON to stdout instead of text (see README, JSON output).")]

_COMMON = {
    "config": ConfigOption,
    "redis_url": RedisUrlOption,
    "database_url": DatabaseUrlOption,
    "verbose": VerboseOption,
    "quiet": QuietOption,
    "log_format": LogFormatOption,
}
_COMMON_DEFAULTS = {
    "config": None, "redis_url": None, "database_url": None, "verbose": 0, "quiet": 0, "log_format": LogFormat.text,
}


def command(group: typer.Typer, name: str | None = None, json_option: bool = True, **kwargs: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register a function as a command that receives a Runtime as its first argument.

    The common options (and --json unless json_option is False) are added to
    the command's signature, so that `poolctl fill --redis-url ...` works for
    every command.
    """

    def decorator(func: Callable[..., Any]) -> Callable[..., Any]:
        # Typer reads the signature; resolve the string annotations that
        # `from __future__ import annotations` leaves, keeping Annotated extras.
        hints = typing.get_type_hints(func, include_extras=True)
        own = [
            parameter.replace(annotation=hints.get(parameter.name, parameter.annotation))
            for parameter in list(inspect.signature(func).parameters.values())[1:]  # drop the Runtime parameter
        ]
        extra = dict(_COMMON)
        defaults = dict(_COMMON_DEFAULTS)
        if json_option:
            extra["json_mode"] = JsonOption
            defaults["json_mode"] = False
        added = [
            inspect.Parameter(key, inspect.Parameter.KEYWORD_ONLY, annotation=annotation, default=defaults[key])
            for key, annotation in extra.items()
        ]

        @functools.wraps(func)
        def wrapper(**values: Any) -> None:
            common = {key: values.pop(key) for key in extra}
            json_mode = common.pop("json_mode", False)
            runtime = Runtime(
                config=common["config"], redis_url=common["redis_url"], database_url=common["database_url"],
                json_mode=json_mode, out=Output(json_mode),
            )
            setup_logging(common["verbose"] - common["quiet"], common["log_format"].value)
            run(runtime, func, values, verbose=common["verbose"] > 0)

        wrapper.__signature__ = inspect.Signature([*own, *added])  # type: ignore[attr-defined]
        wrapper.__annotations__ = {parameter.name: parameter.annotation for parameter in [*own, *added]}
        group.command(name, **kwargs)(wrapper)
        return func

    return decorator


def run(runtime: Runtime, func: Callable[..., Any], values: dict[str, Any], verbose: bool) -> None:
    """Call a command and turn its failure into a one-line message, a JSON error envelope and an exit code."""
    try:
        func(runtime, **values)
        runtime.out.flush()  # a reader that went away must show up here, not at interpreter exit
    except PoolctlError as exc:
        report_error(runtime, exc)
        raise typer.Exit(int(exc.exit_code)) from None
    except KeyboardInterrupt:
        report_failure(runtime, "interrupted", "interrupted", "", ExitCode.INTERRUPTED)
        raise typer.Exit(int(ExitCode.INTERRUPTED)) from None
    except BrokenPipeError:
        # The reader (head, a closed pager) has what it wanted: not an error.
        silence_stdout()
        raise typer.Exit(int(ExitCode.OK)) from None
    except (typer.Exit, typer.Abort, SystemExit):
        raise
    except Exception as exc:
        if verbose:
            log.exception("unexpected error")
        message = f"unexpected {type(exc).__name__}: {exc}"
        report_failure(runtime, "unexpected", message, "Run again with -v for the traceback, and report it", ExitCode.FAILED)
        raise typer.Exit(int(ExitCode.FAILED)) from None
    finally:
        try:
            runtime.close()
        except Exception:  # closing a broken connection must not hide the real outcome
            pass


def report_error(runtime: Runtime, exc: PoolctlError) -> None:
    report_failure(runtime, exc.code, exc.message, exc.hint, exc.exit_code, exc.details)


def report_failure(runtime: Runtime, code: str, message: str, hint: str, exit_code: ExitCode,
                   details: dict[str, Any] | None = None) -> None:
    """Write the one-line error to stderr and, in JSON mode, the error envelope to stdout."""
    error_line(f"{message.rstrip('. ')}. {hint}" if hint else message)
    if runtime.json_mode:
        try:
            runtime.out.json(error_envelope(code, message, hint, details))
        except BrokenPipeError:
            silence_stdout()


def error_envelope(code: str, message: str, hint: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    """Return the JSON error document: {"error": {"code", "message", "hint"}}, plus "details" for some codes."""
    error: dict[str, Any] = {"code": code, "message": message, "hint": hint}
    if details is not None:
        error["details"] = details
    return {"error": error}


def silence_stdout() -> None:
    """Point stdout at /dev/null so that the interpreter's final flush cannot raise again."""
    import os

    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


def main() -> None:
    """Entry point of the `poolctl` console script."""
    from poolctl.cli.commands import register

    register(sys.argv[1:])
    use_utf8_stdout()
    try:
        code = app(standalone_mode=False)
    except typer.TyperException as exc:
        # A usage error, raised before any command ran: the parser's message
        # on stderr and, when --json was asked for, the envelope on stdout.
        # Since typer 0.29 its bundled click raises these as TyperException.
        # One line, like every other error, naming the help to read; a bare
        # `poolctl` or group name shows the help itself.
        context = getattr(exc, "ctx", None)
        where = context.command_path if context is not None else "poolctl"
        hint = f"Run `{where} --help` for its usage"
        message = exc.format_message().rstrip(". ")
        misplaced = message.removeprefix("No such option: ").split(" ")[0]
        at_top = context is None or context.parent is None  # before any command name
        if at_top and message.startswith("No such option: ") and misplaced in COMMON_OPTIONS:
            hint = f"Put {misplaced} after the command name, as in `{where} stats {misplaced} ...`"
        if type(exc).__name__ == "NoArgsIsHelpError":  # no public name for it in typer
            exc.show()  # type: ignore[attr-defined]
        else:
            error_line(f"{message} {hint}" if message.endswith(("?", "!")) else f"{message}. {hint}")
        if "--json" in sys.argv[1:]:
            Output(json_mode=True).json(error_envelope("usage", exc.format_message(), hint))
        code = exc.exit_code
    except typer.Abort:
        error_line("aborted")
        code = int(ExitCode.FAILED)
    except BrokenPipeError:
        silence_stdout()
        code = int(ExitCode.OK)
    exit_now(code or 0)


def exit_now(code: int) -> None:
    """Flush what the command wrote and end the process without the interpreter's teardown.

    The command has closed its connections by now, so tearing down every
    module one by one would only add to the run time of a one-shot `poolctl pop`.
    """
    import os

    logging.shutdown()
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        pass  # the reader went away: what it read is all it wanted
    except OSError:
        code = code or int(ExitCode.FAILED)
    try:
        sys.stderr.flush()
    except OSError:
        pass
    os._exit(code)
