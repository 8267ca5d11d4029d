"""One module per command; importing this package registers them all on the app."""

from poolctl.cli.commands import audit, check, db, doctor, fill, import_items, locks, pop, reconcile, stats  # noqa: F401
