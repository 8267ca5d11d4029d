"""One module per command. `register` imports the modules that register commands on the app."""

from __future__ import annotations

import importlib

# Command name on the command line -> the module that registers it.
MODULES = {
    "audit": "audit", "check": "check", "db": "db", "doctor": "doctor", "fill": "fill",
    "import": "import_items", "locks": "locks", "pop": "pop", "reconcile": "reconcile", "stats": "stats",
}


def register(argv: list[str] | None = None) -> None:
    """Register the command argv names, or every command when argv names none (help, completion).

    A one-shot `poolctl pop` then imports only the pop module and what it
    needs, which keeps its start-up close to that of the interpreter.
    """
    requested = _command_name(argv or [])
    names = [MODULES[requested]] if requested in MODULES else list(MODULES.values())
    for name in names:
        importlib.import_module(f"poolctl.cli.commands.{name}")


def _command_name(argv: list[str]) -> str | None:
    # The app's own options (--help, --version, completion) end the run, so a
    # command line that names a command starts with it.
    return argv[0] if argv and not argv[0].startswith("-") else None
