"""Configuration: one `Settings` object read from flags, environment, a TOML file and defaults.

Precedence, highest first: values passed to `load_settings` (the command-line
flags), `POOLCTL_*` environment variables, the TOML file, the defaults.

Naming rule: a setting's TOML path, joined with underscores and upper-cased,
behind `POOLCTL_`, is its environment variable. `[redis] url` is
`POOLCTL_REDIS_URL`, `[fill] lock_ttl_s` is `POOLCTL_FILL_LOCK_TTL_S`, and
`[pools.titles] size` is `POOLCTL_POOLS_TITLES_SIZE`.

The TOML file is `--config`, else `POOLCTL_CONFIG`, else `./poolctl.toml` when
it exists. A `[pools.*]` table in it defines the whole set of pool types;
without one, the defaults `titles` and `contents` apply.
"""

from __future__ import annotations

import copy
import os
import re
import tomllib
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from poolctl.errors import ConfigError, UnknownPoolType

ENV_PREFIX = "POOLCTL_"
CONFIG_ENV = "POOLCTL_CONFIG"
DEFAULT_CONFIG_FILE = "poolctl.toml"

IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
POOL_TYPE_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")

DEFAULT_POOLS: dict[str, dict[str, Any]] = {
    "titles": {"table": "titles", "text_column": "title", "text_type": "short"},
    "contents": {"table": "contents", "text_column": "content", "text_type": "long"},
}


def _identifier(value: str) -> str:
    if not IDENTIFIER.match(value):
        raise ValueError(
            f"{value!r} is not a valid SQL identifier (letters, digits and _, not starting with a digit, at most 64)"
        )
    return value


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RedisSettings(_Section):
    """Redis connection and key naming."""

    url: str = Field("redis://127.0.0.1:6379/0", repr=False)
    key_prefix: str = ""
    hash_tags: bool = False
    socket_timeout_s: float = Field(5.0, gt=0)
    connect_timeout_s: float = Field(3.0, gt=0)

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("redis", "rediss", "unix"):
            raise ValueError("must start with redis://, rediss:// or unix://")
        # redis-py reads a path that is not a number as database 0, silently.
        if parts.scheme != "unix" and parts.path.strip("/") and not parts.path.strip("/").isdigit():
            raise ValueError(f"database number {parts.path.strip('/')!r} is not a number, as in redis://host:6379/0")
        return value


class DatabaseSettings(_Section):
    """SQL connection."""

    url: str = Field("sqlite:///poolctl.db", repr=False)
    connect_timeout_s: float = Field(5.0, gt=0)

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        if urlsplit(value).scheme not in ("sqlite", "mysql"):
            raise ValueError("must start with sqlite:/// or mysql://")
        return value


class StatusValues(_Section):
    """The values of the SQL status column for each item state."""

    available: int = 1
    queued: int = 2
    consumed: int = 0

    @model_validator(mode="after")
    def _distinct(self) -> StatusValues:
        if len({self.available, self.queued, self.consumed}) != 3:
            raise ValueError("available, queued and consumed must be three different values")
        return self


class FillSettings(_Section):
    """Timing of fill passes and fill locks."""

    interval_s: float = Field(5.0, gt=0)
    min_interval_s: float = Field(0.05, gt=0)
    lock_ttl_s: float = Field(60.0, gt=0)
    discover_interval_s: float = Field(30.0, gt=0)
    # `fill --watch` fills a pool that drains fast while it still contains this
    # many seconds of pops at its current drain rate, even above its threshold.
    lead_s: float = Field(0.5, ge=0)


class AckSettings(_Section):
    """Batching of acks on their way to SQL."""

    batch: int = Field(500, gt=0, le=100_000)
    interval_s: float = Field(1.0, gt=0)
    # True: a consumer flushes in a thread of its own, so that its pops do not
    # wait for SQL. False: the popping thread flushes, at the pop that is due.
    background: bool = True


class PoolTypeSettings(_Section):
    """One pool type: its SQL table and columns and the size of its pools."""

    table: str
    text_column: str
    id_column: str = "id"
    group_column: str = "group_id"
    batch_column: str = "batch_id"
    status_column: str = "status"
    text_type: Literal["short", "long"] = "long"
    size: int = Field(5000, gt=0)
    threshold: int = Field(1000, ge=0)
    batch: int = Field(500, gt=0, le=100_000)

    _check_identifiers = field_validator(
        "table", "text_column", "id_column", "group_column", "batch_column", "status_column"
    )(_identifier)

    @model_validator(mode="after")
    def _consistent(self) -> PoolTypeSettings:
        if self.threshold >= self.size:
            raise ValueError(f"threshold ({self.threshold}) must be below size ({self.size})")
        if self.batch > self.size:
            raise ValueError(f"batch ({self.batch}) must be at most size ({self.size})")
        return self


SECTIONS: dict[str, type[_Section]] = {
    "redis": RedisSettings,
    "database": DatabaseSettings,
    "status": StatusValues,
    "fill": FillSettings,
    "acks": AckSettings,
}
# A pool type name this many edits away from a default one is taken for a
# misspelling of it in errors: titel and title are, articles is not.
MISSPELLING_DISTANCE = 2
POOL_KEYS = tuple(sorted(PoolTypeSettings.model_fields, key=len, reverse=True))

_config_file: ContextVar[Path | None] = ContextVar("poolctl_config_file", default=None)


def env_name(*path: str) -> str:
    """Return the environment variable for a TOML path, by the naming rule."""
    return ENV_PREFIX + "_".join(part.upper() for part in path)


def _parse_env_name(name: str) -> tuple[str, ...] | None:
    """Return the TOML path an environment variable names, or None when it names none."""
    rest = name[len(ENV_PREFIX) :].lower()
    for section, model in SECTIONS.items():
        for key in model.model_fields:
            if rest == f"{section}_{key}":
                return (section, key)
    if rest.startswith("pools_"):
        for key in POOL_KEYS:
            if rest.endswith("_" + key) and len(rest) > len("pools_") + len(key) + 1:
                return ("pools", rest[len("pools_") : -len(key) - 1], key)
    return None


def read_env() -> dict[str, Any]:
    """Collect POOLCTL_* variables into a nested dict, rejecting names that match no setting."""
    values: dict[str, Any] = {}
    for name, value in os.environ.items():
        if not name.startswith(ENV_PREFIX) or name == CONFIG_ENV:
            continue
        path = _parse_env_name(name)
        if path is None:
            raise ConfigError(
                f"unknown environment variable {name}",
                "Unset it or fix its name: the rule is POOLCTL_ + the TOML path joined by _, "
                "see poolctl.toml.example",
            )
        _set_path(values, path, value)
    return values


def _set_path(target: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    for part in path[:-1]:
        target = target.setdefault(part, {})
    target[path[-1]] = value


def _get_path(source: dict[str, Any], path: tuple[str | int, ...]) -> Any:
    for part in path:
        if not isinstance(source, dict) or part not in source:
            raise KeyError(part)
        source = source[part]
    return source


def config_path(explicit: str | Path | None = None) -> Path | None:
    """Return the TOML file to read: the explicit one, POOLCTL_CONFIG, or ./poolctl.toml if present."""
    if explicit:
        return Path(explicit)
    if os.environ.get(CONFIG_ENV):
        return Path(os.environ[CONFIG_ENV])
    default = Path(DEFAULT_CONFIG_FILE)
    return default if default.is_file() else None


def read_toml(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(
            f"config file {path} not found", "Create it from poolctl.toml.example or fix --config / POOLCTL_CONFIG"
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}", "Fix the file") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}", "Check the path and its permissions") from None


class _DictSource(PydanticBaseSettingsSource):
    """A settings source that returns a ready-made nested dict."""

    def __init__(self, settings_cls: type[BaseSettings], data: dict[str, Any]) -> None:
        super().__init__(settings_cls)
        self._data = data

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return self._data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return self._data


class Settings(BaseSettings):
    """Every setting of poolctl. Build it with `load_settings`, which applies the precedence."""

    model_config = SettingsConfigDict(extra="forbid", frozen=True)

    redis: RedisSettings = RedisSettings()
    database: DatabaseSettings = DatabaseSettings()
    status: StatusValues = StatusValues()
    fill: FillSettings = FillSettings()
    acks: AckSettings = AckSettings()
    pools: dict[str, PoolTypeSettings] = Field(default_factory=dict)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml_data = read_toml(_config_file.get())
        env_data = read_env()
        # [pools.*] in the file replaces the default set of pool types. A type
        # named after a default one (titles, contents) keeps that type's table
        # and columns unless it sets them.
        listed = toml_data.get("pools")
        if isinstance(listed, dict):
            named = set(listed) | set(env_data.get("pools", {}))
            pools = {name: spec for name, spec in DEFAULT_POOLS.items() if name in named}
        else:
            pools = DEFAULT_POOLS
        defaults = {"pools": copy.deepcopy(pools)}
        return (
            init_settings,
            _DictSource(settings_cls, env_data),
            _DictSource(settings_cls, toml_data),
            _DictSource(settings_cls, defaults),
        )

    @field_validator("pools")
    @classmethod
    def _check_pools(cls, pools: dict[str, PoolTypeSettings]) -> dict[str, PoolTypeSettings]:
        if not pools:
            raise ValueError("at least one pool type must be configured")
        for name in pools:
            if not POOL_TYPE_NAME.match(name):
                raise ValueError(f"pool type name {name!r} must be lower-case letters, digits and _")
        return pools

    def pool(self, pool_type: str) -> PoolTypeSettings:
        """Return the settings of one pool type, raising UnknownPoolType for a name not configured."""
        try:
            return self.pools[pool_type]
        except KeyError:
            known = ", ".join(sorted(self.pools))
            raise UnknownPoolType(
                f"unknown pool type {pool_type!r}", f"Configured pool types: {known} (see [pools.*] in the config)"
            ) from None


def load_settings(config_file: str | Path | None = None, **overrides: Any) -> Settings:
    """Build Settings from overrides (flags), environment, TOML file and defaults, in that order.

    Overrides are nested dicts by TOML path, for example `redis={"url": ...}`.
    Raises ConfigError with the offending value and where it came from.
    """
    path = config_path(config_file)
    token = _config_file.set(path)
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise _config_error(exc, path, overrides) from None
    finally:
        _config_file.reset(token)


def _config_error(exc: ValidationError, path: Path | None, overrides: dict[str, Any]) -> ConfigError:
    error = exc.errors()[0]
    loc = tuple(str(part) for part in error["loc"])
    where = _describe_origin(loc, path, overrides)
    if error["type"] == "missing" and len(loc) == 3 and loc[0] == "pools":
        return _missing_pool_keys(exc, loc[1], where)
    message = error["msg"].removeprefix("Value error, ")
    value = error.get("input")
    shown = "" if isinstance(value, dict) or value is None else f" = {value!r}"
    if loc and loc[-1] == "url":
        shown = ""  # a URL may carry a password; the message never repeats it
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    name = ".".join(loc) or "settings"
    return ConfigError(f"invalid config value {name}{shown}: {message}{more}", f"Fix it in {where}")


def _missing_pool_keys(exc: ValidationError, pool_type: str, where: str) -> ConfigError:
    """Name every key a pool type lacks, and the default type a misspelled name may have meant."""
    missing = [
        str(error["loc"][2]) for error in exc.errors()
        if error["type"] == "missing" and len(error["loc"]) == 3 and error["loc"][:2] == ("pools", pool_type)
    ]
    close = [name for name in DEFAULT_POOLS if _edit_distance(pool_type, name) <= MISSPELLING_DISTANCE]
    guess = f" (did you mean pool type {close[0]}?)" if close else ""
    return ConfigError(
        f"pool type {pool_type!r} has no {' and no '.join(missing)}: a pool type other than "
        f"{' and '.join(DEFAULT_POOLS)} must set them",
        f"Fix it in {where}{guess}",
    )


def _edit_distance(first: str, second: str) -> int:
    """Return the number of edits (insert, delete, substitute, swap two neighbours) that turn first into second."""
    previous, current = list(range(len(second) + 1)), [0] * (len(second) + 1)
    before_previous: list[int] = []
    for i, char in enumerate(first, 1):
        current = [i] + [0] * len(second)
        for j, other in enumerate(second, 1):
            current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (char != other))
            if i > 1 and j > 1 and char == second[j - 2] and first[i - 2] == other:
                current[j] = min(current[j], before_previous[j - 2] + 1)
        before_previous, previous = previous, current
    return previous[len(second)]


def _describe_origin(loc: tuple[str, ...], path: Path | None, overrides: dict[str, Any]) -> str:
    """Name the highest-precedence source that sets the value at loc or anything under it."""
    env = read_env()
    toml_data = read_toml(path)
    # A model-level error (threshold against size) points at the model, so walk up from the leaf.
    for length in range(len(loc), 0, -1):
        prefix = loc[:length]
        if _has_path(overrides, prefix):
            return "the command line"
        if _has_path(env, prefix):
            names = sorted(name for name in os.environ if _parse_env_name(name) and _parse_env_name(name)[:length] == prefix)
            return "environment variable " + ", ".join(names)
        if _has_path(toml_data, prefix):
            return str(path)
    return str(path) if path else "the defaults"


def _has_path(source: dict[str, Any], path: tuple[str, ...]) -> bool:
    try:
        _get_path(source, path)
    except KeyError:
        return False
    return True


def mask_url(url: str) -> str:
    """Return the URL with its password replaced by ***, safe for output and logs."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<invalid URL>"
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))
