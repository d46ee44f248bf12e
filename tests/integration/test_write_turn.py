"""SQLite writers take turns on a file lock across processes, so none waits in SQLite's polling busy handler."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from connector.store import connect
from connector.store.db import WriteTurn

HOLD = """
import sys, time
from connector.store.db import WriteTurn
with WriteTurn(sys.argv[1]):
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def test_a_writer_in_another_process_waits_for_the_turn(tmp_path: Path) -> None:
    path = str(tmp_path / "db.write-turn")
    turn = WriteTurn(path)
    with subprocess.Popen([sys.executable, "-c", HOLD, path, "0.5"], stdout=subprocess.PIPE, text=True) as holder:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        started = time.monotonic()
        with turn:
            waited = time.monotonic() - started
    turn.close()
    assert waited > 0.2  # it slept in flock until the holder let go


def test_the_turn_is_reentrant_in_a_thread_and_released_after_the_outermost_exit(tmp_path: Path) -> None:
    path = str(tmp_path / "db.write-turn")
    turn = WriteTurn(path)
    with turn, turn:
        pass
    # Released: another process takes it at once
    done = subprocess.run([sys.executable, "-c", HOLD, path, "0"], capture_output=True, text=True, timeout=10)
    assert done.stdout == "held\n"
    turn.close()


@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_sqlite_file_database_uses_a_write_turn_beside_its_file(database_url: str) -> None:
    db = connect(database_url)
    try:
        with db.writer():
            pass
        assert Path(f"{db.engine.url.database}.write-turn").exists()
    finally:
        db.dispose()
