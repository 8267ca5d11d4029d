"""Exceptions raised by poolctl and the exit codes the command line maps them to.

Every error a user can cause or fix is a `PoolctlError`. Its message names the
problem and its `hint` names the next step; the CLI prints both on one line.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Any


class ExitCode(IntEnum):
    """Process exit codes of the `poolctl` command, documented in the README."""

    OK = 0
    FAILED = 1
    USAGE = 2
    POOL_EMPTY = 3
    UNAVAILABLE = 4
    POOLS_LOW = 5
    INTERRUPTED = 130


class PoolctlError(Exception):
    """Base class of every error poolctl reports to a user."""

    exit_code: ExitCode = ExitCode.FAILED
    code: str = "failed"

    def __init__(self, message: str, hint: str = "", details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.details = details  # structured data for the JSON error envelope, such as rejected lines

    def __str__(self) -> str:
        message = self.message.rstrip(". ")
        return f"{message}. {self.hint}" if self.hint else message


class ConfigError(PoolctlError):
    """A configuration value, file or command-line argument is invalid."""

    exit_code = ExitCode.USAGE
    code = "config"


class UnknownPoolType(ConfigError):
    """A pool type was named that the configuration does not define."""

    code = "unknown_pool_type"


class UnknownGroup(ConfigError):
    """A group was named that has no rows in the pool type's table."""

    code = "unknown_group"


class SchemaError(PoolctlError):
    """A table or column that the configuration names is missing from the database."""

    exit_code = ExitCode.USAGE
    code = "schema"


class ServiceUnavailable(PoolctlError):
    """Redis or the SQL database cannot be reached."""

    exit_code = ExitCode.UNAVAILABLE
    code = "unavailable"


class RedisUnavailable(ServiceUnavailable):
    """Redis cannot be reached or stopped responding."""

    code = "redis_unavailable"


class DatabaseUnavailable(ServiceUnavailable):
    """The SQL database cannot be reached or stopped responding."""

    code = "database_unavailable"


class PoolEmpty(PoolctlError):
    """A pop found no item in the pool (and, with fallback, none available in SQL)."""

    exit_code = ExitCode.POOL_EMPTY
    code = "pool_empty"


class WrongKeyType(PoolctlError):
    """A Redis key that poolctl owns contains a value of another type than it expects."""

    code = "wrong_key_type"

    def __init__(self, message: str, hint: str = "", key: str | None = None) -> None:
        super().__init__(message, hint)
        self.key = key


class DataError(PoolctlError):
    """Data cannot be stored as it is, such as text the column's character set cannot hold."""

    code = "data"


class LockLost(PoolctlError):
    """A fill lock expired or was taken over while its holder was still working."""

    code = "lock_lost"
