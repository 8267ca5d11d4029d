"""One module per command; importing this package registers them all on the app."""

from poolctl.cli.commands import audit, db, fill, locks, pop, reconcile, stats  # noqa: F401
