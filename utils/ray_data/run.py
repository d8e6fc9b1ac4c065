"""-i PATHS --ray [ADDRESS]: image mode on a Ray cluster, with Ray Data doing the distribution
(docs/large-runs.md). This process, the driver, lists every input on its own (local paths, or any URI
pyarrow reads: s3://, gs://, ...), Ray's tasks read the files, ``BatchCaptioner`` actors caption them
(utils/ray_data/batch.py), and the driver writes the records as they come into one --captions-file through
image mode's own writers (utils/output/): Parquet, JSON Lines, CSV or TSV, the same columns, atomically
as always. Every input is a record: one that cannot be listed, opened or read is that record's error,
and the others go on.

Ray's own retries make the run whole: a task whose actor dies (a killed process, a lost node) is run
again on a restarted actor, and only a task that finished hands its rows on, so no caption is lost and
none is written twice. Those retries are Ray Data's defaults for an actor pool (``max_restarts=-1``,
``max_task_retries=-1``); naming them in ``map_batches`` is deprecated from Ray 2.60, so they are not
named here, and tests/test_ray.py kills an actor to hold Ray to them.
"""

from __future__ import annotations

import contextlib
import ipaddress
import itertools
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import ModuleType
from typing import Any, NamedTuple

import numpy as np

from utils.engine.caption_types import CaptionerOptions, CaptionResult, default_workers
from utils.engine.limits import MAX_IMAGE_PIXELS_ENV, decoding_limit
from utils.engine.preprocess import read_image_bytes, size_problem
from utils.files.checks import check_output_slot, check_writable_folder, never_an_input
from utils.images.inputs import IMAGE_EXTENSIONS, is_image_name, iter_inputs
from utils.images.steps.registry import table_columns
from utils.output.captions_file import file_format, open_writers
from utils.output.records import CaptionRecord, RunSummary
from utils.output.resume import read_resumable
from utils.ray_data.batch import BatchCaptioner
from utils.ray_data.job import OUTPUT_FORMATS, RayJob
from utils.support.errors import CaptionError, first_line
from utils.support.stopping import program_interrupts
from utils.support.text import shortened

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]
INSTALL = "python3 -m pip install -r requirements-ray.txt"
# Rows per actor call: at most a few seconds of work with the full-size models, so that a killed actor
# costs little to redo, while Ray's per-call overhead (milliseconds) stays small beside it; and for a
# small run, at least a few calls per actor, so that the actors share the work evenly.
BATCH_ROWS = 16
CALLS_PER_ACTOR = 4
# What a cluster started elsewhere gets of this project: its code, not model files or test data.
UPLOAD_EXCLUDES = [".git", "**/__pycache__", "/models/*", "!/models/*.py", "/bench/models", "/bench/out",
                   "/tests", "/samples", "/docs"]
# Blocks of input rows at most, each read by one task and captioned by one actor call: enough for
# thousands of actors, few enough that Ray's bookkeeping of a window stays small.
MAX_BLOCKS = 4096
# Rows listed and sent to the cluster at once (a window; the next is listed when it is done), so that the
# driver's memory is bounded by it (under 1 KB a row) and not by the inputs. Each window starts actors of
# its own, so each actor gets at least CALLS_PER_WINDOW calls of it (about 20 minutes of work with the
# full-size models): the models' load and the window's last, uneven calls stay a small part of it.
WINDOW_ROWS = 16_384
CALLS_PER_WINDOW = 256
MAX_SHOWN_ERROR = 300
CONNECT_TIMEOUT_S = 10
LOCAL = -1  # a row's file system: a path this node reads itself (a local path or a file:// URI)
LOOPBACK = "127.0.0.1"
# Ray 2.60 turns a node address of 127.0.0.1 into this machine's network address
# (services.resolve_ip_for_localhost), and its servers then listen on every interface, unless Ray runs as
# one machine's runtime: what this variable asks for. Ray reads it when it is imported
# (ray_constants.ENABLE_RAY_CLUSTER), in this process and in each one it starts.
ONE_MACHINE_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
# A Unix socket's path has at most 107 bytes on Linux (103 on macOS), and Ray puts its sockets this far
# below its temporary folder: /session_<date>_<time>_<microseconds>_<pid>/sockets/plasma_store.
SOCKET_PATH_MAX = 103 if sys.platform == "darwin" else 107
SESSION_SOCKET_ROOM = 66
RUNTIME_FOLDER_PREFIX = "ray-"
# Characters a URI may hold as they are: any other (a space in a file name) is percent-encoded before
# pyarrow parses it, as Ray does.
URI_CHARACTERS = ":/?#[]@!$&'()*+,;=%~"
FOLDER_KINDS = ", ".join(e.lstrip(".") for e in IMAGE_EXTENSIONS)

__all__ = ["OUTPUT_FORMATS", "local_runtime", "read_files", "run_ray"]


def require_ray() -> ModuleType:
    """Ray and Ray Data, or a one-line CaptionError that says how to install them."""
    try:
        import ray
        import ray.data  # noqa: F401  (Ray without its data extra has no ray.data)
    except ImportError as exc:
        raise CaptionError(f"--ray needs Ray Data, which is not installed ({first_line(exc)}); "
                           f"install it with '{INSTALL}'") from None
    return ray


class Entry(NamedTuple):
    """One input as listed: a file to read (its file system, LOCAL or an index in ``filesystems``, and its
    path there), or an input that names none (``error`` says why)."""

    name: str
    source: int = LOCAL
    location: str = ""
    error: str | None = None


@dataclass
class Survey:
    """The first of the two listings: what is left to do, without holding it. The second listing, in
    windows of rows, is what goes to the cluster; neither holds more than one folder's or URI's names."""

    files: int = 0  # files to caption
    unlisted: int = 0  # inputs that name no file
    done: int = 0  # inputs the resumed captions file records as done
    retried: set[str] = field(default_factory=set)  # inputs whose failed records this run replaces
    filesystems: list[Any] = field(default_factory=list)  # the URIs' pyarrow file systems


def run_ray(job: RayJob, options: CaptionerOptions) -> int:
    """Caption every input on the cluster and write --captions-file; the exit status (1 if any failed)."""
    ray = require_ray()
    check_output_slot(job.captions_file)
    check_writable_folder(job.captions_file.parent, "--captions-file")
    resumable = read_resumable(job.captions_file, file_format(job.captions_file) or "", table_columns()) \
        if job.resume else None
    done = resumable.done if resumable is not None else frozenset()
    survey = _survey(job, done, resumable.failed if resumable is not None else {})
    if resumable is not None:
        listed = survey.files + survey.unlisted + survey.done
        logger.info("%d of %d inputs are done in %s", survey.done, listed, job.captions_file)
    # The model folder the actors use: the same path on every node (found there or fetched to it, and
    # verified like every model file), so a shared file system holds one copy for all.
    model_dir = (options.model_dir or _default_model_dir()).resolve()
    failed = written = 0
    # Nothing on stdout (out=None): its writer only logs each failed input, as image mode's does.
    # Nothing left to caption (a resumed run that is done): no runtime to start.
    runtime = _ray_runtime(ray, job.address) if survey.files else contextlib.nullcontext()
    with _ray_warnings(), runtime, \
            open_writers("text", None, job.captions_file, resumable, survey.retried, table_columns()) as out:
        out.begin(survey.files + survey.unlisted)
        options = replace(options, model_dir=model_dir, progress=False)
        for record in _records(ray, job, options, survey, done):
            failed += record.error is not None
            out.write(record)
            written += 1
        out.end(RunSummary(model=options.model))
        logger.info("%d records written to %s", written, job.captions_file)
    return 1 if failed else 0


def _survey(job: RayJob, done: frozenset[str], failed: Mapping[str, object]) -> Survey:
    """Count what is left (resumed: without the inputs done), note the failed ones to replace, and check
    that --captions-file is none of the inputs, in one listing."""
    survey = Survey()
    captions_file = job.captions_file.resolve()
    for entry in list_inputs(job.inputs, survey.filesystems):
        if entry.name in done:
            survey.done += 1
            continue
        if entry.name in failed:
            survey.retried.add(entry.name)
        if entry.error is not None:
            survey.unlisted += 1
            continue
        survey.files += 1
        if entry.source == LOCAL and Path(entry.location).resolve() == captions_file:
            never_an_input([job.captions_file], [Path(entry.location)], "--captions-file")
    return survey


def list_inputs(specs: list[str], filesystems: list[Any]) -> Iterator[Entry]:
    """Each input on its own, in input order, listed as it is asked for: local files, folders and patterns
    as without --ray, and each URI through pyarrow (its file system added to ``filesystems``, once); an
    input that names no file (missing, an empty folder, a scheme pyarrow does not know, a listing that
    fails) is one Entry with its error, and the others go on."""
    for spec in specs:
        if "://" not in spec:
            for item in iter_inputs([spec]):
                if item.path is None:
                    yield Entry(item.name, error=item.error or f"{item.name} is not listed")
                else:
                    path = os.path.abspath(item.path)
                    yield Entry(path, LOCAL, path)
            continue
        try:
            filesystem, files = _uri_files(spec)
        except CaptionError as exc:
            yield Entry(spec, error=str(exc))
            continue
        source = _source_of(filesystem, filesystems)
        for name, location in files:
            yield Entry(name, source, location)


def _uri_files(uri: str) -> tuple[Any, list[tuple[str, str]]]:
    """The file system of ``uri`` and the files it names, (name, path there) each: the file it is, or a
    folder's image files by extension, sorted; a CaptionError that names the URI when it names none."""
    import pyarrow.fs as pafs

    filesystem, location = _resolved(uri)
    try:
        info = filesystem.get_file_info(location)
        if info.type == pafs.FileType.NotFound:
            raise CaptionError(f"{uri} does not exist")
        if info.type == pafs.FileType.File:
            return filesystem, [(uri, location)]  # a file is taken as given, whatever its name, as a path is
        if info.type != pafs.FileType.Directory:
            raise CaptionError(f"{uri} is not a regular file (a pipe, device or socket)")
        found = filesystem.get_file_info(pafs.FileSelector(location, recursive=True))
    except (OSError, ValueError, NotImplementedError) as exc:  # pyarrow's: a refused or failed listing
        raise CaptionError(f"cannot list {uri}: {shortened(first_line(exc), MAX_SHOWN_ERROR)}") from None
    base = location.rstrip("/")
    files = []
    for entry in found:
        relative = entry.path[len(base):].lstrip("/")
        # Ray's own rule for what a folder holds: names that start with . or _ are not data (_SUCCESS).
        if entry.is_file and entry.path.startswith(base) and not relative.startswith((".", "_")) \
                and is_image_name(relative):
            files.append((f"{uri.rstrip('/')}/{relative}", entry.path))
    if not files:
        raise CaptionError(f"folder {uri} has no images ({FOLDER_KINDS})")
    return filesystem, sorted(files)


def _resolved(uri: str) -> tuple[Any, str]:
    """pyarrow's file system for ``uri`` and the path on it; a CaptionError that names the URI for one it
    cannot read (an unknown scheme, a URI it cannot parse, a file system missing its library)."""
    import urllib.parse

    import pyarrow.fs as pafs

    try:
        try:
            return pafs.FileSystem.from_uri(uri)
        except ValueError as exc:  # pyarrow's ArrowInvalid
            if "cannot parse uri" not in str(exc).lower():
                raise
            return pafs.FileSystem.from_uri(urllib.parse.quote(uri, safe=URI_CHARACTERS))
    except Exception as exc:  # ArrowInvalid, ArrowNotImplementedError, OSError (no libhdfs): each scheme's own
        if "unrecognized filesystem type" in str(exc).lower():
            scheme = uri.split("://", 1)[0]
            raise CaptionError(f"{uri}: unknown URI scheme {scheme}:// (pyarrow reads file://, s3://, gs://, "
                               "abfs:// and hdfs://)") from None
        raise CaptionError(f"cannot read {uri}: {shortened(first_line(exc), MAX_SHOWN_ERROR)}") from None


def _source_of(filesystem: Any, known: list[Any]) -> int:
    """A row's file system: LOCAL for this machine's (file://, read as a path is), else its index in
    ``known``, one entry per distinct file system, since each travels with every read task."""
    import pyarrow.fs as pafs

    if isinstance(filesystem, pafs.LocalFileSystem):
        return LOCAL
    for index, other in enumerate(known):
        if other.equals(filesystem):
            return index
    known.append(filesystem)
    return len(known) - 1


def read_files(batch: dict[str, np.ndarray], filesystems: Sequence[Any]) -> dict[str, np.ndarray]:
    """Ray Data's read step: each row's file as ``bytes``, or its ``error`` where it cannot be opened or
    read (gone since it was listed, refused): that row's problem alone, never the run's. A row is its
    ``path`` (the input's name), ``source`` (LOCAL, or its file system's index in ``filesystems``) and
    ``location`` (the path on that file system)."""
    names = batch["path"]
    data = np.full(len(names), None, dtype=object)
    errors = np.full(len(names), None, dtype=object)
    for row, (name, source, location) in enumerate(zip(names, batch["source"], batch["location"], strict=True)):
        try:
            data[row] = _file_bytes(str(name), int(source), str(location), filesystems)
        except CaptionError as exc:
            errors[row] = str(exc)
    return {"path": names, "bytes": data, "error": errors}


def _file_bytes(name: str, source: int, location: str, filesystems: Sequence[Any]) -> bytes:
    if source == LOCAL:
        # As without --ray: a regular file of a size an image can have, opened without blocking.
        try:
            return read_image_bytes(Path(location)).tobytes()
        except CaptionError as exc:
            raise CaptionError(str(exc).replace(location, name)) from None  # a file:// URI is named as given
    try:
        with filesystems[source].open_input_file(location) as file:
            if (problem := size_problem(name, file.size())) is not None:  # the bound a local file has
                raise CaptionError(problem)
            return bytes(file.read())
    except (OSError, ValueError) as exc:  # pyarrow's: a file gone, a refused or failed read
        raise CaptionError(f"cannot read {name}: {shortened(first_line(exc), MAX_SHOWN_ERROR)}") from None


def _default_model_dir() -> Path:
    from models import default_model_dir

    return default_model_dir()


@contextlib.contextmanager
def _ray_warnings() -> Iterator[None]:
    """Ray's Python warnings (about its concurrency settings, its deprecations) only with --debug: stderr
    carries this program's own lines."""
    if logger.isEnabledFor(logging.DEBUG):
        yield
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


@contextlib.contextmanager
def local_runtime(ray: Any, **init: Any) -> Iterator[None]:
    """A Ray runtime of this process's own on this machine for the block (``init``: more of ray.init's
    arguments), reachable on 127.0.0.1 only (its node, GCS and object manager; no dashboard), with its
    logs and sockets in a temporary folder of its own that is removed when it stops, however the block
    ends."""
    folder = _runtime_folder()
    try:
        with _one_machine():
            terminate = signal.getsignal(signal.SIGTERM) if threading.current_thread() is threading.main_thread() \
                else None
            # "local": a runtime of this run's own, never one that ray_current_cluster names (a `ray start`
            # on this machine that may be long gone: Ray would wait on it for ever).
            ray.init(address="local", _node_ip_address=LOOPBACK, _temp_dir=folder, include_dashboard=False, **init)
            if terminate is not None and program_interrupts() is not None:
                # Ray's head node takes SIGTERM over (it would exit at once); the program's handler stops the
                # run as a Ctrl-C does, through this block's clean-up.
                signal.signal(signal.SIGTERM, terminate)
        yield
    finally:
        try:
            ray.shutdown(wait_for_processes=True)  # also after a failed start: what it started stops
        finally:
            shutil.rmtree(folder, ignore_errors=True)


def _runtime_folder() -> str:
    """A new folder for a local runtime under the system's temporary folder, or under /tmp where that one's
    path is too long for the sockets Ray puts below it."""
    base = tempfile.gettempdir()
    room = len(os.path.join(base, RUNTIME_FOLDER_PREFIX + "12345678").encode()) + SESSION_SOCKET_ROOM
    if room > SOCKET_PATH_MAX and os.path.isdir("/tmp"):
        base = "/tmp"
    return tempfile.mkdtemp(prefix=RUNTIME_FOLDER_PREFIX, dir=base)


@contextlib.contextmanager
def _one_machine() -> Iterator[None]:
    """Ray as one machine's runtime while it starts (ONE_MACHINE_ENV): its processes take the variable
    with them, and this process, which imported Ray already, sees it in Ray's constant (private, so only
    where Ray has it)."""
    constants: Any = None
    with contextlib.suppress(ImportError):
        from ray._private import ray_constants as constants
    environ, cluster = os.environ.get(ONE_MACHINE_ENV), getattr(constants, "ENABLE_RAY_CLUSTER", None)
    os.environ[ONE_MACHINE_ENV] = "0"
    if cluster is not None:
        constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        # A later ray.init in this process (a cluster elsewhere) finds Ray as it was.
        if environ is None:
            os.environ.pop(ONE_MACHINE_ENV, None)
        else:
            os.environ[ONE_MACHINE_ENV] = environ
        if cluster is not None:
            constants.ENABLE_RAY_CLUSTER = cluster


@contextlib.contextmanager
def _ray_runtime(ray: Any, address: str | None) -> Iterator[None]:
    """Connected to the cluster at ``address`` (or a local runtime started here) for the block; a
    process that is connected already (a Python caller's own ``ray.init``) stays on its cluster."""
    if ray.is_initialized():
        yield
        return
    quiet = not logger.isEnabledFor(logging.DEBUG)
    if address is None:
        # This machine's workers find the code where it is, and inherit this process's environment (the
        # decoding limit among it). A runtime_env here would cost seconds: its workers start apart.
        os.environ.setdefault(MAX_IMAGE_PIXELS_ENV, str(decoding_limit()))
        runtime: dict[str, Any] | None = None
        job_config = ray.job_config.JobConfig(code_search_path=[str(ROOT)])
    else:
        # A cluster elsewhere gets the code uploaded with the job (a few MB, no model files), and every
        # actor decodes within this program's limit.
        runtime = {"env_vars": {MAX_IMAGE_PIXELS_ENV: str(decoding_limit())}, "working_dir": str(ROOT),
                   "excludes": UPLOAD_EXCLUDES}
        job_config = None
    where = f"the Ray cluster at {address}" if address else "a local Ray runtime"
    if address is not None:
        _check_reachable(address, where)
    # Ray's notes about itself (its token authentication, its deprecations) and what the actors' libraries
    # print (OpenCV about a broken file, which is that row's error) only with --debug.
    init: dict[str, Any] = {"runtime_env": runtime, "job_config": job_config, "log_to_driver": not quiet,
                            "logging_level": logging.ERROR if quiet else logging.INFO}
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(_entrypoint_as_utf8())
            if address is None:
                stack.enter_context(local_runtime(ray, **init))  # which cleans up after a failed start too
            else:
                _join(ray, address, init)
                stack.callback(ray.shutdown)
        except Exception as exc:  # ConnectionError, ValueError, RuntimeError: each library's own
            raise CaptionError(f"cannot start or reach {where}: "
                               f"{shortened(first_line(exc), MAX_SHOWN_ERROR)}") from None
        yield


@contextlib.contextmanager
def _entrypoint_as_utf8() -> Iterator[None]:
    """Ray records the driver's command line (read from the system, psutil's cmdline) as UTF-8 when it
    connects, and a file name there that is not valid UTF-8 (its bytes kept as lone surrogates) would
    stop the run: for that record its stray bytes read as U+FFFD. (The function is Ray's private one,
    so it is replaced only where Ray has it.)"""
    utils: Any = None
    with contextlib.suppress(ImportError):
        from ray._private import utils
    entrypoint = getattr(utils, "get_entrypoint_name", None)
    if entrypoint is None:
        yield
        return

    def as_utf8() -> str:
        return str(entrypoint()).encode("utf-8", "surrogateescape").decode("utf-8", "replace")

    utils.get_entrypoint_name = as_utf8
    try:
        yield
    finally:
        utils.get_entrypoint_name = entrypoint


def _join(ray: Any, address: str, init: dict[str, Any]) -> None:
    """Connect to the cluster at ``address``; --ray auto joins the cluster that `ray start` last started
    on this machine. A cluster on 127.0.0.1 (its nodes started with --node-ip-address 127.0.0.1) is
    joined there: Ray would otherwise take this process for this machine's network address, where
    nothing of that cluster listens, and wait for it for ever."""
    host = address.removeprefix("ray://").rpartition(":")[0].strip("[]")
    if not _is_loopback(host):
        ray.init(address=address, include_dashboard=False, **init)
        return
    with _one_machine():
        ray.init(address=address, include_dashboard=False, _node_ip_address=LOOPBACK, **init)


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _check_reachable(address: str, where: str) -> None:
    """A HOST:PORT that nothing answers at is one line now: Ray itself would retry it for ever."""
    host, sep, port = address.rpartition(":")
    if "://" in address or not sep or not port.isdigit():
        return  # "auto", ray://... (Ray Client, which gives up by itself): Ray's own resolution
    try:
        with socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)), timeout=CONNECT_TIMEOUT_S):
            pass
    except OSError as exc:
        raise CaptionError(f"cannot reach {where}: {exc.strerror or exc}; is `ray start --head` running "
                           "there, and is that its GCS port?") from None


@dataclass(frozen=True)
class _Plan:
    """How the files are spread: actors, their threads, rows per actor call, rows per window."""

    actors: int
    threads: int
    batch_rows: int
    window_rows: int

    @classmethod
    def of(cls, job: RayJob, cpus: int, files: int) -> _Plan:
        # No more actors than files: each one loads the models, and one with nothing to do holds its cores.
        actors = min(job.actors or default_workers(cpus), files)
        threads = max(1, cpus // actors)  # each actor's share of the cluster's cores, one ONNX Runtime session
        batch_rows = max(1, min(BATCH_ROWS, files // (actors * CALLS_PER_ACTOR)))
        window = job.window_rows or max(WINDOW_ROWS, actors * batch_rows * CALLS_PER_WINDOW)
        return cls(actors, threads, batch_rows, window)


def _records(ray: Any, job: RayJob, options: CaptionerOptions, survey: Survey,
             done: frozenset[str]) -> Iterator[CaptionRecord]:
    """Every input's record but the done ones', listed again and sent to the cluster a window of rows at
    a time: what is listed, in flight and held here is bounded by the window, not by the inputs. Within a
    window, the inputs that name no file come first, then the files in input order."""
    entries = (entry for entry in list_inputs(job.inputs, survey.filesystems) if entry.name not in done)
    if not survey.files:  # no runtime was started: every input left is one that names no file
        yield from (CaptionRecord(entry.name, None, entry.error) for entry in entries)
        return
    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
    plan = _Plan.of(job, cpus, survey.files)
    options = replace(options, workers=1, runtime=replace(options.runtime, intra_op_threads=plan.threads))
    logger.info("%d actors with %d threads each on %d CPUs, %d rows a window", plan.actors, plan.threads, cpus,
                plan.window_rows)
    _configure_ray_data(ray)
    captioned = 0
    while window := list(itertools.islice(entries, plan.window_rows)):
        rows = [entry for entry in window if entry.error is None]
        for entry in window:
            if entry.error is not None:
                yield CaptionRecord(entry.name, None, entry.error)
        del window
        if rows:
            yield from _captioned(ray, job, options, plan, rows, survey.filesystems, captioned)
            captioned += len(rows)


def _configure_ray_data(ray: Any) -> None:
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True  # the file lists the inputs in their order
    # Ray's own progress bars, on a terminal; elsewhere (a log, a pipe) Ray would log its progress
    # instead, line after line, where this program prints problems only.
    context.enable_progress_bars = sys.stderr is not None and sys.stderr.isatty()
    if not logger.isEnabledFor(logging.DEBUG):
        # Its failures reach people as this program's one line (a traceback with --debug).
        logging.getLogger("ray.data").setLevel(logging.CRITICAL)


def _captioned(ray: Any, job: RayJob, options: CaptionerOptions, plan: _Plan, entries: list[Entry],
               filesystems: list[Any], captioned: int) -> Iterator[CaptionRecord]:
    """The record of every file of one window, in input order, as the actors finish them (``captioned``:
    the files of the windows before, for the log)."""
    actors = min(plan.actors, len(entries))
    # Blocks of about one actor call each: a block is read by one task and captioned by one call.
    blocks = min(-(-len(entries) // plan.batch_rows), max(MAX_BLOCKS, actors))
    rows = ray.data.from_items([{"path": entry.name, "source": entry.source, "location": entry.location}
                                for entry in entries], override_num_blocks=blocks)
    # Reading takes no CPU of its own: the actors hold every core, and a read task waiting for one would
    # wait for ever. As many reads at once as actors keep them fed. A file that cannot be read is its
    # row's error (read_files), which the actors keep.
    data = rows.map_batches(read_files, fn_kwargs={"filesystems": list(filesystems)}, num_cpus=0,
                            concurrency=actors, batch_size=None, batch_format="numpy")
    captions = data.map_batches(
        BatchCaptioner, fn_constructor_kwargs={"options": options, "decoding": job.decoding, "drop": ("bytes",),
                                               "records": True},
        compute=ray.data.ActorPoolStrategy(size=actors), num_cpus=plan.threads, batch_size=plan.batch_rows,
        batch_format="numpy")
    try:
        for batch in captions.iter_batches(batch_format="numpy", batch_size=None):
            captioned += len(batch["path"])
            logger.debug("%d rows captioned", captioned)
            for row in zip(batch["path"], batch["caption"], batch["confidence"], batch["error"], batch["indices"],
                           batch["backend"], strict=True):
                yield _record(options.model, *row)
    except CaptionError:
        raise
    except Exception as exc:  # an actor that cannot load the models, a lost cluster, ...
        raise CaptionError(f"the Ray run failed: {shortened(_cause(exc), MAX_SHOWN_ERROR)}") from None


def _record(model: str, path: Any, caption: Any, confidence: Any, error: Any, indices: Any,
            backend: Any) -> CaptionRecord:
    """One row as image mode's record, with plain values: Ray hands a column that is None throughout back
    as NaN floats. The actors send back no timings: a --ray record's ``timings`` are empty."""
    if not isinstance(caption, str):
        return CaptionRecord(str(path), None, error if isinstance(error, str) else "no caption")
    value = float(confidence) if confidence is not None and np.isfinite(confidence) else None
    words = [int(i) for i in indices] if indices is not None else []
    return CaptionRecord(str(path), CaptionResult(caption, words, value, {}, model=model, backend=str(backend)))


def _cause(exc: BaseException) -> str:
    """The innermost useful words of a Ray error: its tracebacks are the remote worker's."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException):
        return _cause(cause)
    for line in reversed(str(exc).strip().splitlines()):
        if line.strip() and not line.startswith((" ", "\t", "Traceback")):
            return line.strip()
    return first_line(exc)


