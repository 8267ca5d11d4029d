"""`stats --watch` in a real terminal: tmux runs it while consumers pop, and the pane is read back."""

from __future__ import annotations

import os
import re
import secrets
import shlex
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from test_cli import env, loaded, run  # noqa: F401  (env and loaded are fixtures)


def tmux(socket_name: str, *args: str) -> str:
    result = subprocess.run(["tmux", "-L", socket_name, *args], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    return result.stdout


def table_row(screen: str, pool_type: str, group: int) -> list[str] | None:
    """Return the cells of one pool's row in a Rich table drawn with │ separators."""
    for line in screen.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("│").split("│")]
        if len(cells) > 2 and cells[0] == pool_type and cells[1] == str(group):
            return cells
    return None


def stamp_of(screen: str) -> str:
    found = re.search(r"poolctl stats  (\d\d:\d\d:\d\d)", screen)
    assert found is not None, screen
    return found.group(1)


@pytest.mark.slow
def test_stats_watch_refreshes_in_place(loaded: dict[str, str], tmp_path: Path) -> None:
    assert run(["fill", "-q"], loaded, tmp_path).returncode == 0
    socket_name = f"poolctl-test-{secrets.token_hex(4)}"
    variables = {"PATH": os.environ.get("PATH", ""), "TERM": "xterm-256color", "LANG": "C.UTF-8", **loaded}
    command = " ".join(["env", "-i", *(f"{name}={shlex.quote(value)}" for name, value in variables.items()),
                        shlex.quote(sys.executable), "-m", "poolctl", "stats", "--watch", "--interval", "0.3"])
    # Our own tmux server (-L), so that no other server's environment or sessions are involved.
    tmux(socket_name, "new-session", "-d", "-s", "stats", "-x", "200", "-y", "30", "-c", str(tmp_path), command)
    try:
        columns = None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and columns is None:
            screen = tmux(socket_name, "capture-pane", "-p", "-t", "stats")
            if "pop/s" in screen:
                columns = [cell.strip() for cell in next(line for line in screen.splitlines() if "pop/s" in line).strip("┃ ").split("┃")]
            time.sleep(0.1)
        assert columns is not None, screen
        pop_column = columns.index("pop/s")
        first = tmux(socket_name, "capture-pane", "-p", "-t", "stats")
        assert table_row(first, "titles", 1)[pop_column] == "0.0", first  # type: ignore[index]

        for _ in range(6):  # consumers pop 30 items from titles group 1
            assert run(["pop", "titles", "--group", "1", "--count", "5"], loaded, tmp_path).returncode == 0

        deadline = time.monotonic() + 30
        row = None
        while time.monotonic() < deadline:
            second = tmux(socket_name, "capture-pane", "-p", "-t", "stats")
            row = table_row(second, "titles", 1)
            if row is not None and row[pop_column] == "0.5":
                break
            time.sleep(0.1)
        assert row is not None and row[pop_column] == "0.5", second  # 30 items over the 60 s window
        assert row[columns.index("length")] == "10", second

        history = tmux(socket_name, "capture-pane", "-p", "-S", "-", "-t", "stats")
        assert history.count("pop/s") == 1, history  # redrawn in place, never scrolled out again
        stamps = {stamp_of(first)}
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and len(stamps) < 3:
            stamps.add(stamp_of(tmux(socket_name, "capture-pane", "-p", "-t", "stats")))
            time.sleep(0.2)
        assert len(stamps) >= 3, stamps  # the header's clock moves on: the view keeps refreshing
        print("captured pane after popping:\n" + second)

        tmux(socket_name, "send-keys", "-t", "stats", "C-c")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            sessions = subprocess.run(["tmux", "-L", socket_name, "has-session", "-t", "stats"], capture_output=True)
            if sessions.returncode != 0:
                break
            time.sleep(0.1)
        assert sessions.returncode != 0, "stats --watch did not stop on Ctrl-C"
    finally:
        subprocess.run(["tmux", "-L", socket_name, "kill-server"], capture_output=True)


def test_pop_chinese_in_narrow_terminal(loaded: dict[str, str], tmp_path: Path) -> None:
    assert run(["fill", "-q"], loaded, tmp_path).returncode == 0
    socket_name = f"poolctl-test-{secrets.token_hex(4)}"
    done = tmp_path / "pane-done"
    variables = {"PATH": os.environ.get("PATH", ""), "TERM": "xterm-256color", "LANG": "C.UTF-8", **loaded}
    command = " ".join(["env", "-i", *(f"{name}={shlex.quote(value)}" for name, value in variables.items()),
                        shlex.quote(sys.executable), "-m", "poolctl", "pop", "contents", "--group", "2", "-q",
                        "&&", "touch", shlex.quote(str(done)), "&&", "sleep", "30"])
    # 23 columns: an odd width, so a two-column CJK character cannot end exactly at the edge of every row.
    tmux(socket_name, "new-session", "-d", "-s", "pop", "-x", "23", "-y", "200", "-c", str(tmp_path),
         f"sh -c {shlex.quote(command)}")
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not done.exists():
            time.sleep(0.1)
        assert done.exists(), tmux(socket_name, "capture-pane", "-p", "-t", "pop")
        shown = tmux(socket_name, "capture-pane", "-p", "-J", "-S", "-", "-t", "pop").rstrip("\n")
    finally:
        subprocess.run(["tmux", "-L", socket_name, "kill-server"], capture_output=True)

    database = sqlite3.connect(loaded["POOLCTL_DATABASE_URL"].removeprefix("sqlite:///"))
    consumed = database.execute("SELECT content FROM contents WHERE group_id = 2 AND status = 0").fetchall()
    database.close()
    assert len(consumed) == 1
    text = consumed[0][0]
    assert len(text) >= 300, text  # long enough to wrap over many rows of 23 columns
    assert shown.replace("\n", "") == text, shown
