"""One module per command; importing this package registers them all on the app."""

from poolctl.cli.commands import db, fill, locks, pop, stats  # noqa: F401
