"""Files the program derives from verified model files (int8 models), made once and checked like downloads.

A derived file ``NAME.onnx`` lives beside its source in the model folder with a record ``NAME.json``:

    {"sha256": "<the derived file's SHA-256>", "size": N, "recipe": {...}, "seconds": 9.8, "notes": {...}}

``recipe`` holds everything the content depends on (the source file's SHA-256, the tools' versions,
the method, the calibration photos' SHA-256, a recipe version); ``notes`` are for people (what the
build measured) and are not checked. The file is used only when its bytes, read once, have the
recorded SHA-256 and the record's recipe equals the one this run would use. Anything else (stale,
damaged, tampered, unreadable) is made again, with one warning saying why.

Everything happens under the model folder's lock (utils/engine/download.py): a second run waits, then finds
and checks the first's file. Files are written atomically; the build works in a hidden scratch folder
inside the model folder, removed in ``finally``, and swept by the next run if the process was killed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from utils.engine.model_files import sha256_bytes
from utils.files.atomic import write_atomic
from utils.files.lock import folder_lock
from utils.support.errors import CaptionError

logger = logging.getLogger(__name__)

RECORD_SUFFIX = ".json"
SCRATCH_PREFIX = ".derived-build-"


@dataclass(frozen=True)
class Built:
    """What a build callable returns: the file's content, and notes for its record."""

    data: bytes
    notes: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DerivedFile:
    """What to make, where, and from what."""

    path: Path  # the derived file, in the model folder
    recipe: dict[str, Any]  # JSON-able; everything the content depends on
    build: Callable[[Path], Built]  # makes the content in the empty scratch folder it gets; raises CaptionError
    what: str  # for messages: "the int8 feature model"
    progress_message: str  # shown while building, when progress is on

    @property
    def record_path(self) -> Path:
        return self.path.with_suffix(RECORD_SUFFIX)


@dataclass(frozen=True)
class Cached:
    """A derived file's content, read once and checked against its record."""

    path: Path
    data: bytes
    made: bool  # made by this call (False: reused)


def make_or_reuse(spec: DerivedFile, progress: bool = True) -> Cached:
    """The derived file's checked content: the cached one if it is valid, else one made now and cached.

    Raises CaptionError (one line) when it cannot be made or written."""
    folder = spec.path.parent
    try:
        with folder_lock(folder):
            _sweep_leftovers(folder, spec)
            data, problem = _read_valid(spec)
            if data is not None:
                logger.debug("using %s (checked against %s)", spec.path, spec.record_path.name)
                return Cached(spec.path, data, made=False)
            if problem is not None:
                logger.warning("%s %s; making %s again", spec.path.name, problem, spec.what)
            return Cached(spec.path, _make(spec, progress), made=True)
    except OSError as error:  # the folder is read-only, the disk full...
        raise CaptionError(f"cannot make {spec.what} {spec.path}: {error}") from error


def _read_valid(spec: DerivedFile) -> tuple[bytes | None, str | None]:
    """(content, None) when the cached file is valid; (None, why) when it is not; (None, None) when
    there is none yet (first use needs no warning)."""
    file_exists, record_exists = spec.path.exists(), spec.record_path.exists()
    if not file_exists and not record_exists:
        return None, None
    if not file_exists:
        return None, "is missing (its record is there)"
    try:
        data = spec.path.read_bytes()  # the only read: the checksum and the session use these bytes
    except OSError as error:
        return None, f"cannot be read ({error.strerror or error})"
    record = _read_record(spec.record_path)
    if record is None:
        return None, f"has no valid record ({spec.record_path.name} is missing, unreadable or malformed)"
    differs = _recipe_differences(record["recipe"], _normalised(spec.recipe))
    if differs:
        return None, f"was made with another {', '.join(differs)}"
    if sha256_bytes(data) != record["sha256"]:
        return None, "does not match its recorded checksum (damaged or changed)"
    return data, None


def _read_record(path: Path) -> dict[str, Any] | None:
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    if (not isinstance(record, dict) or not isinstance(record.get("sha256"), str)
            or not isinstance(record.get("recipe"), dict)):
        return None
    return record


def _normalised(recipe: dict[str, Any]) -> dict[str, Any]:
    """The recipe as it reads back from JSON (tuples become lists), so the two compare equal."""
    normalised: dict[str, Any] = json.loads(json.dumps(recipe))
    return normalised


def _recipe_differences(recorded: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    """The recipe's keys whose values differ, for the warning: "source model, onnxruntime version"."""
    return sorted(k.replace("_", " ") for k in recorded.keys() | wanted.keys() if recorded.get(k) != wanted.get(k))


def _make(spec: DerivedFile, progress: bool) -> bytes:
    folder = spec.path.parent
    # Neither a stale file nor its record may outlive a failed build: the next run would check them again.
    spec.record_path.unlink(missing_ok=True)
    spec.path.unlink(missing_ok=True)
    if progress:
        print(spec.progress_message, end="", file=sys.stderr, flush=True)
    start = time.perf_counter()
    done = False
    scratch = Path(tempfile.mkdtemp(prefix=SCRATCH_PREFIX, dir=folder))
    try:
        with _temp_files_in(scratch):
            built = spec.build(scratch)
        data = built.data
        seconds = time.perf_counter() - start
        # The file first, then its record: killed in between, the file has no record and is made again.
        write_atomic(spec.path, data)
        record = {"sha256": sha256_bytes(data), "size": len(data), "recipe": _normalised(spec.recipe),
                  "seconds": round(seconds, 2), "notes": built.notes}
        write_atomic(spec.record_path, (json.dumps(record, indent=1) + "\n").encode("utf-8"))
        done = True
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        if progress:
            print(f" done ({time.perf_counter() - start:.1f} s)" if done else " failed", file=sys.stderr, flush=True)
    logger.info("made %s in %.1f s (%d bytes)", spec.path, seconds, len(data))
    return data


@contextlib.contextmanager
def _temp_files_in(scratch: Path) -> Iterator[None]:
    """Send every ``tempfile`` temporary of the block (onnxruntime.quantization makes its own folders
    with tempfile.TemporaryDirectory) into ``scratch``, so a killed build leaves them where the next
    run sweeps them instead of in the system's temp folder. Process-wide while it lasts: the program
    loads its models before it starts any thread."""
    tmp = scratch / "tmp"
    tmp.mkdir()
    saved = tempfile.tempdir
    tempfile.tempdir = str(tmp)
    try:
        yield
    finally:
        tempfile.tempdir = saved


def _sweep_leftovers(folder: Path, spec: DerivedFile) -> None:
    """Remove what a killed build left. Builds run under the folder lock, which we hold: any scratch
    folder or half-written file present now belongs to a process that no longer runs."""
    leftovers = [*folder.glob(SCRATCH_PREFIX + "*"),
                 *folder.glob(f".{spec.path.name}.part-*"), *folder.glob(f".{spec.record_path.name}.part-*")]
    for path in leftovers:
        logger.debug("removing %s, left by an interrupted run", path)
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
