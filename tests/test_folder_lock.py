"""The model folder's lock (utils/files/lock.py): one holder at a time, a waiter told why it waits, and a
folder the program cannot write in run unlocked."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import pytest

from utils.files.lock import LOCK_NAME, folder_lock


def test_a_second_holder_waits_for_the_first_and_says_so(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="utils.files.lock")
    events: list[str] = []
    held, waiting = threading.Event(), threading.Event()

    class Waiting(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.getMessage().startswith("waiting for another process using"):
                events.append("second waits")
                waiting.set()

    handler = Waiting()
    logging.getLogger("utils.files.lock").addHandler(handler)

    def second() -> None:
        held.wait()
        with folder_lock(tmp_path):
            events.append("second holds")

    thread = threading.Thread(target=second)
    thread.start()
    try:
        with folder_lock(tmp_path):
            events.append("first holds")
            held.set()
            assert waiting.wait(30), "the second holder never found the lock taken"
            events.append("first lets go")
        thread.join(30)
    finally:
        logging.getLogger("utils.files.lock").removeHandler(handler)
    assert events == ["first holds", "second waits", "first lets go", "second holds"]
    assert (tmp_path / LOCK_NAME).is_file()  # kept: earlier versions lock the same file


def test_a_folder_it_cannot_write_in_runs_unlocked(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="utils.files.lock")
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("x")
    ran = False
    with folder_lock(not_a_folder):
        ran = True
    assert ran and "running without a lock" in caplog.text
    with folder_lock(tmp_path / "missing"):
        pass  # a missing folder too: nothing to guard there, and the lock makes no folder
    assert not (tmp_path / "missing").exists()
