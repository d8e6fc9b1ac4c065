"""Making sure the model files are present and intact before they are loaded.

Each file is fetched on first use, its content checked, and its sha256 recorded beside it in
``<name>.sha256``; every later load compares the file with that record, so a truncated or damaged
file is noticed and fetched again (or reported, when offline). No checksums are published
upstream, so the first download is the reference.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import onnx

from models import MIRROR_ENV, FileKind, ModelFile, ModelSet
from utils.engine.download import download, is_https
from utils.files.atomic import write_atomic
from utils.files.lock import folder_lock
from utils.support.errors import CaptionError, first_line
from vocab import Vocabulary, vocabulary_from_bytes

logger = logging.getLogger(__name__)

SIDECAR_SUFFIX = ".sha256"


class VerifiedFile:
    """A model file read once: its bytes, checked, and what they parse to (parsed at most once).

    Everything the program does with a model file goes through one of these, so each file is read
    once per process (the ailia SDK, which opens its files by name, is the exception)."""

    def __init__(self, kind: FileKind, path: Path, data: bytes) -> None:
        self.kind = kind
        self.path = path
        self.data = data
        self._sha256: str | None = None
        self._onnx: onnx.ModelProto | None = None
        self._vocabulary: Vocabulary | None = None

    @property
    def sha256(self) -> str:
        """The content's SHA-256 (hex), computed once."""
        if self._sha256 is None:
            self._sha256 = sha256_bytes(self.data)
        return self._sha256

    def onnx_model(self) -> onnx.ModelProto:
        """The parsed ONNX model; CaptionError (the reason only) if it is not one."""
        if self._onnx is None:
            try:
                # Only the graph is needed to tell a model from garbage; external weights are not used.
                model = onnx.load_from_string(self.data)
            except Exception as error:
                raise CaptionError(f"not a valid ONNX model ({first_line(error)})") from error
            # Protobuf reads an empty (or lucky) byte string as an empty model, so parsing is not enough.
            if not model.graph.output:
                raise CaptionError("not a valid ONNX model (it has no graph outputs)")
            self._onnx = model
        return self._onnx

    def vocabulary(self) -> Vocabulary:
        """The vocabulary (keys exactly "1".."N", string values); CaptionError (the reason only) otherwise."""
        if self._vocabulary is None:
            self._vocabulary = vocabulary_from_bytes(self.data)
        return self._vocabulary

    def check(self) -> None:
        """Raise CaptionError (the message is the reason; callers add the file) if unusable."""
        logger.debug("checking the content of %s as %s", self.path, self.kind)
        if self.kind == "onnx":
            self.onnx_model()
        elif self.kind == "prototxt":
            _check_prototxt(self.data)
        else:
            self.vocabulary()


def _check_prototxt(data: bytes) -> None:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise CaptionError(f"not UTF-8 text ({error.reason} at byte {error.start})") from error
    if not text.strip():
        raise CaptionError("empty prototxt")


def check_file(kind: FileKind, path: Path) -> None:
    """Check a file's content (a download before it is kept); CaptionError with the reason."""
    VerifiedFile(kind, path, path.read_bytes()).check()


def decoder_vocab_size(model: onnx.ModelProto) -> int | None:
    """V from the decoder's second output (log-probabilities, last axis V+1), if it is static."""
    outputs = model.graph.output
    if len(outputs) < 2:
        return None
    dims = outputs[1].type.tensor_type.shape.dim
    # Index 0 of the last axis is end-of-sentence, hence V+1 scores for V words.
    if not dims or not dims[-1].HasField("dim_value") or dims[-1].dim_value < 2:
        return None
    return int(dims[-1].dim_value) - 1


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + SIDECAR_SUFFIX)


def _recorded_sha256(path: Path) -> str | None:
    try:
        fields = _sidecar(path).read_text(encoding="ascii").split()
    except (OSError, UnicodeDecodeError):
        return None
    if fields and len(fields[0]) == 64 and all(c in "0123456789abcdef" for c in fields[0]):
        return fields[0]
    # An unreadable record is no evidence either way: the file gets the content checks instead.
    logger.debug("ignoring the malformed checksum record %s", _sidecar(path))
    return None


def checksum_record(path: Path, digest: str) -> tuple[Path, bytes]:
    """Where the checksum record of ``path`` goes, and its content."""
    # sha256sum's format, so `sha256sum -c model_fc.onnx.sha256` works in the model folder.
    return _sidecar(path), f"{digest}  {path.name}\n".encode("ascii")


def _record_sha256(path: Path, digest: str) -> None:
    try:
        write_atomic(*checksum_record(path, digest))
    except OSError as error:
        # Not fatal: the file itself is good, and without a record it is content-checked next time.
        logger.warning("cannot record the checksum of %s (%s)", path, error)


def _problem(file: VerifiedFile, saved: str = "downloaded") -> str | None:
    """Why the file just read cannot be used, or None when it is fine."""
    recorded = _recorded_sha256(file.path)
    digest = file.sha256
    if recorded is not None:
        logger.debug("comparing %s with its recorded checksum", file.path)
        if digest == recorded:
            return None
        # Either may be the damaged one: the file, or its record. Neither is deleted on that evidence.
        return f"checksum differs from the one recorded when it was {saved}, in {_sidecar(file.path).name}"
    # Placed here by hand (or a run stopped between saving it and recording its checksum).
    try:
        file.check()
    except CaptionError as error:
        return str(error)
    _record_sha256(file.path, digest)
    return None


def reimport_advice(path: Path) -> str:
    """What to do about a missing or damaged file of an imported model (there is no URL to fetch it from)."""
    folder = path.parent
    return (f"import the checkpoint again: delete {folder}, then run --import-checkpoint MODEL.pth INFOS.pkl "
            f"--name {folder.name}")


def _missing_imported(path: Path) -> CaptionError:
    return CaptionError(f"{path} is missing; {reimport_advice(path)}")


def _missing_message(missing: list[ModelFile], model_dir: Path) -> str:
    count = "1 model file is" if len(missing) == 1 else f"{len(missing)} model files are"
    lines = [
        f"{count} missing and --offline forbids downloading; fetch each from its URL and put it at the path shown:"
    ]
    lines += [f"  {f.url} -> {model_dir / f.name}" for f in missing]
    return "\n".join(lines)


def _fetch(f: ModelFile, path: Path, progress: bool) -> None:
    mirror = os.environ.get(MIRROR_ENV)
    if mirror and not is_https(mirror):
        raise CaptionError(f"{MIRROR_ENV} must be an https:// URL, not {mirror}")
    # Nothing is deleted before its replacement is verified: the download lands under a temporary name,
    # is checked, its record is written, and only then is it renamed over the old file. A failed fetch
    # leaves the old file and its record as they were (so a mismatch is reported again next time); a run
    # stopped between the record and the rename leaves a new record that the old file fails, and the
    # next run fetches again.
    def check_and_record(tmp: Path) -> None:
        check_file(f.kind, tmp)
        _record_sha256(path, sha256_bytes(tmp.read_bytes()))

    assert f.url is not None, "imported files are never fetched"
    download(f.url, path, check_and_record, progress)


def load_file(f: ModelFile, model_dir: Path, offline: bool, progress: bool = True) -> VerifiedFile:
    """``f`` from ``model_dir``, read once and checked; fetched first if missing or corrupt (unless offline)."""
    model_dir = model_dir.absolute()
    path = model_dir / f.name
    if f.url is None and not path.exists():
        raise _missing_imported(path)
    if offline and not path.exists():
        raise CaptionError(_missing_message([f], model_dir))
    if not offline:
        try:
            model_dir.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise CaptionError(f"cannot create the model folder {model_dir}: {error}") from error
    try:
        with folder_lock(model_dir):
            return _load_locked(f, path, offline, progress)
    except OSError as error:  # unreadable file, full disk, no write permission...
        raise CaptionError(f"cannot use {path}: {error}") from error


def _load_locked(f: ModelFile, path: Path, offline: bool, progress: bool) -> VerifiedFile:
    # Looked at only under the lock: another process may have fetched or replaced it meanwhile.
    if not path.exists():
        if f.url is None:
            raise _missing_imported(path)
        if offline:
            raise CaptionError(_missing_message([f], path.parent))
    else:
        file = VerifiedFile(f.kind, path, path.read_bytes())
        problem = _problem(file, "downloaded" if f.url else "imported")
        if problem is None:
            return file
        if f.url is None:
            raise CaptionError(f"{path} is corrupt ({problem}); {reimport_advice(path)}")
        if offline:
            raise CaptionError(f"{path} is corrupt ({problem}); run without --offline to fetch a good copy "
                               "(the file is replaced only once the new one is verified)")
        logger.warning("%s is corrupt (%s); fetching it again (it is replaced only once the new copy is verified)",
                       path, problem)
    _fetch(f, path, progress)
    return VerifiedFile(f.kind, path, path.read_bytes())


def _check_vocab_matches_decoder(ms: ModelSet, files: dict[str, VerifiedFile]) -> None:
    decoder = next((f for f in ms.decoder if f.kind == "onnx"), None)
    if decoder is None or decoder.name not in files or ms.vocab.name not in files:
        return
    vocab, model = files[ms.vocab.name], files[decoder.name]
    words, expected = len(vocab.vocabulary()), decoder_vocab_size(model.onnx_model())
    if expected is not None and words != expected:
        raise CaptionError(
            f"{vocab.path} has {words} words but {model.path} scores {expected} words; "
            "the vocabulary must be the one published with the model"
        )


def load_model_set(
    ms: ModelSet,
    model_dir: Path,
    offline: bool,
    progress: bool = True,
    files: list[ModelFile] | None = None,
) -> dict[str, VerifiedFile]:
    """Load ``files`` (default: all of ``ms``), each read once and checked; map name -> file.

    Offline, every missing file is reported in one error. The vocabulary's size is checked
    against the decoder's output when both are among the files.
    """
    wanted = ms.all if files is None else files
    model_dir = model_dir.absolute()
    if model_dir.exists() and not model_dir.is_dir():
        raise CaptionError(f"the model folder {model_dir} is a file, not a folder; give --model-dir a folder")
    if offline:
        missing = [f for f in wanted if not (model_dir / f.name).exists()]
        if missing:
            imported = [f for f in missing if f.url is None]
            if imported:  # nothing to download: the advice is to import again
                raise _missing_imported(model_dir / imported[0].name)
            raise CaptionError(_missing_message(missing, model_dir))
    loaded = {f.name: load_file(f, model_dir, offline, progress) for f in wanted}
    _check_vocab_matches_decoder(ms, loaded)
    return loaded
