"""-i PATHS --ray [ADDRESS]: image mode on a Ray cluster, with Ray Data doing the distribution
(docs/large-runs.md). Ray reads the files (local paths, or any URI pyarrow reads: s3://, gs://, ...),
``BatchCaptioner`` actors caption them (utils/batch.py), and this process, the driver, writes the rows as
they come into one --captions-file: Parquet, JSON Lines, CSV or TSV, atomically as always.

Ray's own retries make the run whole: a task whose actor dies (a killed process, a lost node) is run
again on a restarted actor, and only a task that finished hands its rows on, so no caption is lost and
none is written twice. Those retries are Ray Data's defaults for an actor pool (``max_restarts=-1``,
``max_task_retries=-1``); naming them in ``map_batches`` is deprecated from Ray 2.60, so they are not
named here, and tests/test_ray.py kills an actor to hold Ray to them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from utils.batch import BatchCaptioner
from utils.captioner import CaptionerOptions, default_workers
from utils.decoding.options import DecodingOptions
from utils.errors import CaptionError, first_line
from utils.files.checks import check_output_slot, check_writable_folder, never_an_input
from utils.inputs import IMAGE_EXTENSIONS, expand_inputs
from utils.limits import MAX_IMAGE_PIXELS_ENV, decoding_limit
from utils.output.rows import OUTPUT_FORMATS, RowsFile
from utils.text import printable

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
INSTALL = "python3 -m pip install -r requirements-ray.txt"
# Rows per actor call: at most a few seconds of work with the full-size models, so that a killed actor
# costs little to redo, while Ray's per-call overhead (milliseconds) stays small beside it; and for a
# small run, at least a few calls per actor, so that the actors share the work evenly.
BATCH_ROWS = 16
CALLS_PER_ACTOR = 4
# What a cluster started elsewhere gets of this project: its code, not model files or test data.
UPLOAD_EXCLUDES = [".git", "**/__pycache__", "/models/*", "!/models/*.py", "/bench/models", "/bench/out",
                   "/tests", "/samples", "/docs"]
MAX_SHOWN_ERROR = 300
CONNECT_TIMEOUT_S = 10

__all__ = ["OUTPUT_FORMATS", "RayJob", "run_ray"]


@dataclass(frozen=True)
class RayJob:
    inputs: list[str]
    address: str | None  # as ray.init takes it; None: a local Ray runtime on this machine
    captions_file: Path
    actors: int | None = None  # None: one per two of the cluster's CPUs (default_workers)
    decoding: DecodingOptions = field(default_factory=DecodingOptions)


def require_ray() -> ModuleType:
    """Ray and Ray Data, or a one-line CaptionError that says how to install them."""
    try:
        import ray
        import ray.data  # noqa: F401  (Ray without its data extra has no ray.data)
    except ImportError as exc:
        raise CaptionError(f"--ray needs Ray Data, which is not installed ({first_line(exc)}); "
                           f"install it with '{INSTALL}'") from None
    return ray


def run_ray(job: RayJob, options: CaptionerOptions) -> int:
    """Caption every input on the cluster and write --captions-file; the exit status (1 if any failed)."""
    ray = require_ray()
    uris = [spec for spec in job.inputs if "://" in spec]
    items = expand_inputs([spec for spec in job.inputs if "://" not in spec]) if len(uris) < len(job.inputs) else []
    files = [os.path.abspath(item.path) for item in items if item.path is not None]
    unlisted = [(item.name, item.error or "not listed") for item in items if item.path is None]
    check_output_slot(job.captions_file)
    check_writable_folder(job.captions_file.parent, "--captions-file")
    never_an_input([job.captions_file], [Path(f) for f in files], "--captions-file")
    # The model folder the actors use: the same path on every node (found there or fetched to it, and
    # verified like every model file), so a shared file system holds one copy for all.
    model_dir = (options.model_dir or _default_model_dir()).resolve()
    failed = bool(unlisted)
    with _ray_runtime(ray, job.address), RowsFile(job.captions_file) as out:
        for name, error in unlisted:
            logger.error("%s", printable(error))
            out.write(name, None, None, error)
        if files or uris:
            for row in _captioned(ray, job, replace(options, model_dir=model_dir, progress=False), files, uris):
                if row[3] is not None:
                    logger.error("%s", printable(row[3]))
                    failed = True
                out.write(*row)
        logger.info("%d rows written to %s", out.rows, job.captions_file)
    return 1 if failed else 0


def _default_model_dir() -> Path:
    from models import default_model_dir

    return default_model_dir()


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
    try:
        # "local": a runtime of this run's own, never one that ray_current_cluster names (a `ray start`
        # on this machine that may be long gone: Ray would wait on it for ever); --ray auto joins that one.
        # Ray's notes about itself (its token authentication, its deprecations) and what the actors'
        # libraries print (OpenCV about a broken file, which is that row's error) only with --debug.
        ray.init(address=address or "local", runtime_env=runtime, job_config=job_config,
                 include_dashboard=False, logging_level=logging.ERROR if quiet else logging.INFO,
                 log_to_driver=not quiet)
    except Exception as exc:  # ConnectionError, ValueError, RuntimeError: each library's own
        raise CaptionError(f"cannot start or reach {where}: {_short(first_line(exc))}") from None
    try:
        yield
    finally:
        ray.shutdown()


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


def _captioned(ray: Any, job: RayJob, options: CaptionerOptions, files: list[str],
               uris: list[str]) -> Iterator[tuple[str, str | None, float | None, str | None]]:
    """(input, caption, confidence, error) of every file, in input order, as the actors finish them."""
    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
    actors = job.actors or default_workers(cpus)
    threads = max(1, cpus // actors)  # each actor's share of the cluster's cores, one ONNX Runtime session
    options = replace(options, workers=1, runtime=replace(options.runtime, intra_op_threads=threads))
    logger.info("%d actors with %d threads each on %d CPUs", actors, threads, cpus)
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True  # the file lists the inputs in their order
    # Ray's own progress bars, on a terminal; elsewhere (a log, a pipe) Ray would log its progress
    # instead, line after line, where this program prints problems only.
    context.enable_progress_bars = sys.stderr is not None and sys.stderr.isatty()
    if not logger.isEnabledFor(logging.DEBUG):
        # Its failures reach people as this program's one line (a traceback with --debug).
        logging.getLogger("ray.data").setLevel(logging.CRITICAL)
    # Reading takes no CPU of its own: the actors hold every core, and a read task waiting for one would
    # wait for ever. As many reads at once as actors keep them fed.
    parts = []
    if files:
        parts.append(ray.data.read_binary_files(files, include_paths=True, num_cpus=0, concurrency=actors))
    if uris:
        parts.append(ray.data.read_binary_files(uris, include_paths=True, num_cpus=0, concurrency=actors,
                                                file_extensions=[e.lstrip(".") for e in IMAGE_EXTENSIONS]))
    data = parts[0] if len(parts) == 1 else parts[0].union(*parts[1:])
    captions = data.map_batches(
        BatchCaptioner, fn_constructor_kwargs={"options": options, "decoding": job.decoding, "drop": ("bytes",)},
        compute=ray.data.ActorPoolStrategy(size=actors), num_cpus=threads,
        batch_size=max(1, min(BATCH_ROWS, len(files) // (actors * CALLS_PER_ACTOR))) if files and not uris
        else BATCH_ROWS, batch_format="numpy")
    received = 0
    try:
        for batch in captions.iter_batches(batch_format="numpy", batch_size=None):
            received += len(batch["path"])
            logger.debug("%d rows captioned", received)
            for path, caption, confidence, error in zip(batch["path"], batch["caption"], batch["confidence"],
                                                        batch["error"], strict=True):
                yield _row(path, caption, confidence, error)
    except CaptionError:
        raise
    except Exception as exc:  # a file Ray could not read, an actor that cannot load the models, ...
        raise CaptionError(f"the Ray run failed: {_short(_cause(exc))}") from None


def _row(path: Any, caption: Any, confidence: Any, error: Any) -> tuple[str, str | None, float | None, str | None]:
    """One output row with plain values: Ray hands a column that is None throughout back as NaN floats."""
    text = caption if isinstance(caption, str) else None
    value = float(confidence) if text is not None and confidence is not None and np.isfinite(confidence) else None
    return str(path), text, value, error if isinstance(error, str) else None


def _cause(exc: BaseException) -> str:
    """The innermost useful words of a Ray error: its tracebacks are the remote worker's."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException):
        return _cause(cause)
    for line in reversed(str(exc).strip().splitlines()):
        if line.strip() and not line.startswith((" ", "\t", "Traceback")):
            return line.strip()
    return first_line(exc)


def _short(text: str) -> str:
    return text if len(text) <= MAX_SHOWN_ERROR else text[:MAX_SHOWN_ERROR] + "…"
