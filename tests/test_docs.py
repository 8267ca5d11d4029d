"""Docs cannot drift: every command has help text and a section in both READMEs, and no README section names a
command that does not exist."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import typer

from poolctl.cli.app import app
from poolctl.cli.commands import register

register()  # every command, as `poolctl --help` lists them

ROOT = Path(__file__).resolve().parent.parent
READMES = [ROOT / "README.md", ROOT / "README.zh-CN.md"]
SECTION = re.compile(r"^### `poolctl ([^`]*)`", re.MULTILINE)


def leaf_commands() -> dict[str, object]:
    """Return every runnable command by its words after `poolctl`, such as "db init"."""
    found: dict[str, object] = {}

    def walk(command: object, words: list[str]) -> None:
        children = getattr(command, "commands", None)
        if children:
            for name, child in children.items():
                walk(child, [*words, name])
        else:
            found[" ".join(words)] = command

    walk(typer.main.get_command(app), [])
    return found


def documented(readme: Path) -> set[str]:
    """Return the command words of each `### \\`poolctl ...\\`` section heading."""
    names = set()
    for heading in SECTION.findall(readme.read_text(encoding="utf-8")):
        words = []
        for word in heading.split():
            if not re.fullmatch(r"[a-z][a-z-]*", word):
                break
            words.append(word)
        names.add(" ".join(words))
    return names


def test_commands_are_the_expected_set() -> None:
    assert set(leaf_commands()) >= {"fill", "pop", "stats", "locks", "doctor", "import", "check", "db init",
                                    "db check", "reconcile", "audit"}


@pytest.mark.parametrize("name", sorted(leaf_commands()))
def test_command_has_help(name: str) -> None:
    command = leaf_commands()[name]
    assert (getattr(command, "help", None) or "").strip(), f"poolctl {name} has no help text"
    for parameter in getattr(command, "params", []):
        assert (getattr(parameter, "help", None) or "").strip(), f"poolctl {name}: {parameter.name} has no help text"


@pytest.mark.parametrize("readme", READMES, ids=[path.name for path in READMES])
def test_readme_sections_match_commands(readme: Path) -> None:
    sections = documented(readme)
    commands = set(leaf_commands())
    assert commands - sections == set(), f"{readme.name} has no section for these commands"
    assert sections - commands == set(), f"{readme.name} has sections for commands that do not exist"
