"""One ExifTool process for a whole run, driven through its ``-stay_open`` argument file on stdin.

Perl's start-up costs 0.1-0.2 s, so a process per photo would dominate a batch; ``-stay_open True -@ -``
keeps one process reading commands from stdin. Each command ends with ``-execute{N}``; ExifTool then
prints ``{readyN}`` on stdout, and ``-echo4 {readyN}`` puts the same marker on stderr after the command's
messages, so both streams of one command can be read to their end. Two reader threads drain the pipes
(select() does not work on pipes on Windows, and a full stderr pipe would block ExifTool).

A broken or hostile ExifTool must cost neither unbounded memory nor unbounded time. The readers take
the pipes in chunks (never a whole line: a line may have no end) into short queues, so at most a few
chunks wait between commands; one command's answer is cut off at ``MAX_STDOUT``/``MAX_STDERR`` bytes
and ``timeout`` seconds. Past either, the process is killed and the next command starts a new one; after
the second such failure in a run no new one is started, and every later command fails at once.

The argument file takes one argument per line, and a plain line loses its leading blanks and trailing
CR/LF. Our arguments are options, tag assignments starting with '-', and absolute paths, so only a file
name holding a line break needs more: a ``#[CSTR]`` line, a C string with ``\\n`` escapes. ExifTool
12.57 turns '$' and '@' in such a line into '\\$' and '\\@', so a name with both a line break and one
of those cannot be passed at all (refused). Captions never go through the argument file: they are
written to a file that ExifTool reads as the tag's value (``-TAG<=FILE``), byte for byte.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from utils.support.errors import CaptionError
from utils.support.text import shortened

logger = logging.getLogger(__name__)

# 12.33 (October 2021) added the IPTC 2021.1 tags, XMP-iptcCore:AltTextAccessibility among them.
MIN_VERSION = (12, 33)
INSTALL_HINT = (
    "install ExifTool: 'sudo apt-get install libimage-exiftool-perl' (Debian/Ubuntu), "
    "'brew install exiftool' (macOS), or the Windows executable from https://exiftool.org"
)
# Arguments given once, for every command: file names and values are UTF-8 (the default for values,
# but Windows file names need it said), and files over 2 GB are read.
COMMON_ARGS = ("-charset", "filename=UTF8", "-api", "LargeFileSupport=1")
# One command's time-out. Writing one photo's metadata takes a few tens of milliseconds and reading its
# tags less, since ExifTool copies the file without decoding it; a slow disk or network share makes that
# seconds. A command that copies a large file gets more time on top (``allowance``, see alt_text.py).
DEFAULT_TIMEOUT_S = 60.0
# One command's answer: a JSON record of a few tags of one file is a few KB, and its largest value is a
# description already in the photo, a paragraph. 8 MiB is a thousand times that, and little memory
# beside the models; 1 MiB of warnings and errors is as far beyond the few lines ExifTool prints per file.
MAX_STDOUT = 8 << 20
MAX_STDERR = 1 << 20
CHUNK = 64 << 10  # one read from a pipe
QUEUED_CHUNKS = 16  # read ahead at most this many chunks per pipe (1 MiB), then ExifTool waits for us
# Failures (time-out, too much output, an unexpected end) after which no new ExifTool is started: the
# first may be one bad file, the second says it will not work in this run, and waiting on it for every
# photo left could take hours.
MAX_FAILURES = 2  # what the messages call "twice"
MAX_DETAIL = 200  # characters of ExifTool's own words quoted in an error


@dataclass(frozen=True)
class Reply:
    """What one command printed, without the ``{readyN}`` markers."""

    stdout: str
    stderr: str

    def errors(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.startswith("Error")]

    def warnings(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.startswith("Warning")]


class ExifToolStopped(CaptionError):
    """The ExifTool process ended (killed, crashed), stopped answering or printed too much; ``reason``
    says which, as words that follow "ExifTool"."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason

    @classmethod
    def because(cls, reason: str) -> ExifToolStopped:
        return cls(f"ExifTool {reason}; it was stopped", reason)


def find_exiftool() -> str | None:
    return shutil.which("exiftool")


def parse_version(text: str) -> tuple[int, ...]:
    match = re.match(r"\s*(\d+)\.(\d+)", text)
    if match is None:
        raise ValueError(f"not an ExifTool version: {text!r}")
    return int(match.group(1)), int(match.group(2))


def require_exiftool() -> None:
    """Raise a one-line CaptionError, saying how to install ExifTool, if it is missing or too old."""
    executable = find_exiftool()
    if executable is None:
        raise CaptionError(f"writing metadata needs ExifTool, which is not installed; {INSTALL_HINT}")
    try:
        out = subprocess.run([executable, "-ver"], capture_output=True, text=True, timeout=60, check=True).stdout
        version = parse_version(out)
    except (OSError, subprocess.SubprocessError, ValueError) as exc:
        raise CaptionError(f"ExifTool ({executable}) does not run: {exc}; {INSTALL_HINT}") from exc
    if version < MIN_VERSION:
        need = ".".join(map(str, MIN_VERSION))
        raise CaptionError(
            f"ExifTool {out.strip()} is too old (writing alt text needs {need} or newer); {INSTALL_HINT}"
        )


class UnsafeArgument(CaptionError):
    """An argument (a file name) the argument file cannot carry unchanged."""


def encode_arg(arg: str) -> str:
    """One argument as an argfile line (without its newline); UnsafeArgument if it cannot be one."""
    if "\n" not in arg and "\r" not in arg:
        if arg[:1].isspace() or arg.startswith("#") or not arg:
            raise UnsafeArgument(f"ExifTool cannot be given {arg!r}: its argument file would change it")
        return arg
    if "$" in arg or "@" in arg:
        raise UnsafeArgument(
            f"ExifTool cannot be given the name {arg!r}: it holds a line break and '$' or '@'; rename the file"
        )
    return "#[CSTR]" + arg.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r")


def has_format_codes(path: str) -> bool:
    """True if ExifTool would read ``path`` given to -o or ``<=`` as a pattern (``%d``, ``%f``, ...):
    it has no escape for '%', so such a name cannot be passed as one."""
    return re.search(r"%[-+]?\d*[.:]?\d*[lu]?[dDfFeEtgso]", path) is not None


def parse_json(stdout: str) -> list[dict[str, Any]]:
    # ExifTool prints a value that looks like a number without quotes; keeping the token's text gives
    # back the string that was written ("1.50" stays "1.50", not 1.5).
    data = json.loads(stdout, parse_int=str, parse_float=str) if stdout.strip() else []
    if not isinstance(data, list):
        raise ValueError("ExifTool's JSON is not a list")
    return data


class ExifTool:
    """A ``-stay_open`` ExifTool process, started on the first command and again after it was stopped
    (a crash, a time-out, too much output), up to ``MAX_FAILURES`` times in all."""

    def __init__(self, command: Sequence[str] | None = None, timeout: float = DEFAULT_TIMEOUT_S) -> None:
        # ``command`` replaces the ExifTool executable (tests run it under resource limits, or fake it).
        self._command = list(command) if command is not None else None
        self._timeout = timeout
        self._process: subprocess.Popen[bytes] | None = None
        self._readers: tuple[_Reader, _Reader] | None = None  # stdout's and stderr's
        self._sequence = 0
        self._failures: list[str] = []  # why each process that was stopped was stopped

    def __enter__(self) -> ExifTool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def _start(self) -> subprocess.Popen[bytes]:
        command = self._command
        if command is None:
            executable = find_exiftool()
            if executable is None:
                raise CaptionError(f"writing metadata needs ExifTool, which is not installed; {INSTALL_HINT}")
            command = [executable]
        args = [*command, "-stay_open", "True", "-@", "-", "-common_args", *COMMON_ARGS]
        try:
            # A process group of its own (see _child_setup); a dead process is noticed as the end of its
            # stdout.
            process = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                       preexec_fn=_child_setup())
        except OSError as exc:
            raise CaptionError(f"cannot start ExifTool: {exc.strerror or exc}; {INSTALL_HINT}") from exc
        assert process.stdout is not None and process.stderr is not None
        self._readers = (_Reader(process.stdout), _Reader(process.stderr))
        self._process = process
        # ExifTool never ends at the end of its stdin (it polls for more, as for a growing file), so a
        # writer that is never closed must not leave it running: it is killed when this object goes or
        # the interpreter exits.
        weakref.finalize(self, _kill_quietly, process)
        logger.debug("started ExifTool, pid %d", process.pid)
        return process

    def execute(self, *args: str, allowance: float = 0.0) -> Reply:
        """Run one command (the arguments of one ExifTool command line) and return what it printed.
        ``allowance``: seconds added to the time-out for this command (a large file to copy).
        Any exception while waiting, Ctrl-C included, kills the process: its answer would otherwise be
        read as the next command's, and a write it was doing must be over before its output is removed."""
        if len(self._failures) >= MAX_FAILURES:
            raise ExifToolStopped(f"ExifTool stopped answering twice in this run; not tried "
                                  f"(the last time it {self._failures[-1]})", self._failures[-1])
        if self._process is None or self._process.poll() is not None:
            self.kill()  # one that ended between commands: reaped, its pipes closed
            self._start()
        process, readers = self._process, self._readers
        assert process is not None and readers is not None
        self._sequence += 1
        marker = f"{{ready{self._sequence}}}"
        lines = [encode_arg(a) for a in args] + ["-echo4", marker, f"-execute{self._sequence}"]
        timeout = self._timeout + allowance
        try:
            assert process.stdin is not None
            try:
                # A file name that is not valid UTF-8 reached Python as lone surrogates: ExifTool gets its bytes.
                process.stdin.write(("\n".join(lines) + "\n").encode("utf-8", "surrogateescape"))
                process.stdin.flush()
            except OSError as exc:  # BrokenPipeError: it died between commands
                raise self._stopped(process, b"") from exc
            deadline = time.monotonic() + timeout
            stdout = self._read_until(process, readers[0], marker, deadline, timeout, MAX_STDOUT)
            stderr = self._read_until(process, readers[1], marker, deadline, timeout, MAX_STDERR)
        except ExifToolStopped as exc:
            self.kill()
            self._failures.append(exc.reason)
            if len(self._failures) >= MAX_FAILURES:
                raise ExifToolStopped(f"{exc} (the second time in this run: it is not started again)",
                                      exc.reason) from exc
            raise
        except BaseException:
            self.kill()
            raise
        return Reply(stdout, stderr)

    def _read_until(self, process: subprocess.Popen[bytes], reader: _Reader, marker: str, deadline: float,
                    timeout: float, limit: int) -> str:
        """What one pipe holds up to the line ``marker`` (anything after it in the same read is dropped:
        ExifTool prints nothing between commands); ExifToolStopped past ``limit`` bytes, past the deadline,
        or at the pipe's end."""
        got = bytearray()
        end = marker.encode("ascii")
        while (at := _line_at(got, end, max(0, len(got) - CHUNK - len(end) - 2))) is None:
            if len(got) > limit:
                raise ExifToolStopped.because(f"printed more than {limit >> 20} MB in answer to one command")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ExifToolStopped.because(f"did not answer within {timeout:.0f} s")
            try:
                chunk = reader.chunks.get(timeout=min(remaining, 1.0))
            except queue.Empty:
                continue
            if chunk is None:
                raise self._stopped(process, got)
            got += chunk
        return got[:at].decode("utf-8", "replace")

    def _stopped(self, process: subprocess.Popen[bytes], output: bytes | bytearray) -> ExifToolStopped:
        try:
            status = process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            status = None
        how = f"exit status {status}" if status is not None and status >= 0 else f"signal {-(status or 0)}"
        text = output[-MAX_DETAIL * 4:].decode("utf-8", "replace").strip()
        last = text.splitlines()[-1][-MAX_DETAIL:] if text else ""
        return ExifToolStopped(f"ExifTool stopped unexpectedly ({how}){f' ({last})' if last else ''}",
                               f"stopped unexpectedly ({how})")

    def read_tags(self, path: Path, tags: Sequence[str]) -> dict[str, str]:
        """``tags`` (ExifTool group:name) of ``path`` as strings, keyed as asked; absent tags left out. A
        tag asked with a trailing ``*`` (``XMP-dc:Description*``) stands for every tag it begins, each
        keyed by its own name (``XMP-dc:Description-de``)."""
        reply = self.execute("-j", "-G1", "-a", *(f"-{t}" for t in tags), absolute(path))
        try:
            records = parse_json(reply.stdout)
        except ValueError as exc:
            raise CaptionError(f"cannot read the metadata of {path}: ExifTool's answer is not JSON") from exc
        record = records[0] if records else {}
        if not record and reply.errors():
            raise CaptionError(f"cannot read the metadata of {path}: {clean_message(reply.errors()[0])}")
        return _asked(record, tags)

    def read_many(self, paths: Sequence[Path], tags: Sequence[str],
                  allowance: float = 0.0) -> dict[str, dict[str, str]]:
        """``tags`` of several files in one command, keyed by each file's absolute path as ``absolute``
        gives it; a file ExifTool could not read, or whose record names it otherwise, is left out."""
        names = [absolute(path) for path in paths]
        reply = self.execute("-j", "-G1", "-a", *(f"-{t}" for t in tags), *names, allowance=allowance)
        try:
            records = parse_json(reply.stdout)
        except ValueError as exc:
            raise CaptionError(f"cannot read the metadata of {len(names)} files: ExifTool's answer is not "
                               "JSON") from exc
        asked = set(names)
        found: dict[str, dict[str, str]] = {}
        for record in records:
            source = record.get("SourceFile") if isinstance(record, dict) else None
            if isinstance(source, str) and source in asked and "ExifTool:Error" not in record:
                found[source] = _asked(record, tags)
        return found

    def kill(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.kill()
        process.wait()
        self._finish(process)

    def close(self) -> None:
        """Ask ExifTool to finish (``-stay_open False``), and kill it if it does not within a few seconds."""
        process, self._process = self._process, None
        if process is None:
            return
        try:
            if process.poll() is None and process.stdin is not None:
                process.stdin.write(b"-stay_open\nFalse\n")
                process.stdin.flush()
                process.stdin.close()
            process.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            process.kill()
            process.wait()
        finally:
            self._finish(process)

    def _finish(self, process: subprocess.Popen[bytes]) -> None:
        # The readers end at the pipes' end of file, which the process's exit brings; closing a pipe
        # while its reader is still reading it could block, so they are stopped first.
        for reader in self._readers or ():
            reader.stop()
        self._readers = None
        _close_pipes(process)


class _Reader:
    """A thread that drains one of ExifTool's pipes into ``chunks``, ``None`` marking the pipe's end.
    It reads whatever is there, never waiting for a line's end (a line may have none), and stops reading
    while ``QUEUED_CHUNKS`` wait unread: what ExifTool prints then stays in the pipe, and a full pipe
    makes ExifTool wait, so memory stays bounded even between commands."""

    def __init__(self, pipe: IO[bytes]) -> None:
        self.chunks: queue.Queue[bytes | None] = queue.Queue(maxsize=QUEUED_CHUNKS)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(pipe,), daemon=True, name="exiftool-reader")
        self._thread.start()

    def _run(self, pipe: IO[bytes]) -> None:
        try:
            while chunk := os.read(pipe.fileno(), CHUNK):
                if not self._put(chunk):
                    return
        except (OSError, ValueError):  # the pipe was closed under us
            pass
        self._put(None)

    def _put(self, item: bytes | None) -> bool:
        """Queue ``item``, waiting while the queue is full; False if told to stop meanwhile."""
        while not self._stop.is_set():
            try:
                self.chunks.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def _line_at(data: bytearray, line: bytes, start: int) -> int | None:
    """Where ``line`` stands alone on a line of ``data`` (ended by LF or CR LF), searching from ``start``;
    None if it is not there (yet)."""
    at = data.find(line, start)
    while at >= 0:
        after = bytes(data[at + len(line):at + len(line) + 2])
        if (at == 0 or data[at - 1] == 0x0A) and (after[:1] == b"\n" or after == b"\r\n"):
            return at
        at = data.find(line, at + 1)
    return None


def _child_setup() -> Callable[[], None] | None:
    """What the child does before ExifTool starts (POSIX). It gets a process group of its own, so that a
    Ctrl-C at the terminal reaches this program only, which lets the photo at hand be finished (ExifTool
    included) and then closes ExifTool (utils/support/stopping.py). On Linux it also asks the kernel to kill it
    when its parent dies, so that even a run killed with SIGKILL leaves no ExifTool behind. (The kernel
    ties this to the thread that started it; should that thread end first, ExifTool ends and the next
    command starts a new one.) libc is looked up here, in the parent: the child only makes the calls."""
    if sys.platform == "win32":
        return None
    prctl = None
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            prctl = ctypes.CDLL(None, use_errno=True).prctl
        except (OSError, AttributeError):
            prctl = None
    pr_set_pdeathsig = 1

    def setup() -> None:
        os.setpgid(0, 0)
        if prctl is not None:
            prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)

    return setup


def _kill_quietly(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        with contextlib.suppress(OSError):
            process.kill()
            process.wait(timeout=5)


def _close_pipes(process: subprocess.Popen[bytes]) -> None:
    for pipe in (process.stdin, process.stdout, process.stderr):
        if pipe is not None:
            with contextlib.suppress(OSError):
                pipe.close()


def absolute(path: Path) -> str:
    """A file argument ExifTool can never take for an option: absolute, so never starting with '-'."""
    return os.path.abspath(path)


def clean_message(message: str) -> str:
    """ExifTool's 'Error: Something - /path/to/file' without the 'Error: ' and the trailing file name, cut
    to ``MAX_DETAIL`` characters."""
    text = re.sub(r"^(Error|Warning):\s*", "", message.strip())
    text = re.sub(r" - (/|[A-Za-z]:\\).*$", "", text)
    return shortened(text, MAX_DETAIL)


def _asked(record: dict[str, Any], tags: Sequence[str]) -> dict[str, str]:
    """The record's values of ``tags``, keyed as asked (ExifTool's answer may differ in case)."""
    exact = {t.lower(): t for t in tags if not t.endswith("*")}
    prefixes = [(t[:-1].lower(), t[:-1]) for t in tags if t.endswith("*")]
    out = {}
    for key, value in record.items():
        name = exact.get(key.lower())
        if name is None:
            name = next((shown + key[len(low):] for low, shown in prefixes if key.lower().startswith(low)), None)
        if name is not None:
            out[name] = str(value)
    return out
