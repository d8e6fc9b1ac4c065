"""pycocoevalcap (PyPI 1.2) and the Java it runs, used as its COCOEvalCap uses them, with its habits
that would hurt this program kept in check. Its own code computes every number; nothing here changes one.

- Its PTBTokenizer writes its temporary file into its own package folder (which is read-only when
  pycocoevalcap was installed by another user, or system-wide) and runs Java there, on a jar named
  relative to that folder. Here its ``tokenize`` runs unchanged, with globals that place that folder in
  a private temporary folder holding a link to the jar.
- It never checks the Java tokenizer's exit status, and pairs output lines with captions by position
  (``zip``), so a failed tokenizer, or a caption that Java splits in two lines, shifts or drops captions
  without a word. Here the exit status and the number of lines are checked. pycocoevalcap turns "\\n" in a
  caption into a space; the tokenizer also breaks lines at CR, VT, FF, U+2028 and U+2029, which are
  turned into spaces too (Java reads every one as a space within a line, so no token changes).
- The tokenizer's Java prints a statistics line to our stderr; here it goes to a file, shown only when
  the tokenizer fails.
- Meteor starts a Java process (``-Xmx2G``) when it is made and stops it only in ``__del__``; when
  ``compute_score`` fails midway it keeps its lock, and ``__del__`` would then wait on it forever.
  Here the process is stopped and reaped when scoring ends, however it ends, and the lock is renewed.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
import threading
import types
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any, TypeVar

from utils.support.errors import CaptionError
from utils.support.text import shortened

INSTALL = "python3 -m pip install -r requirements-eval.txt"
JAVA_PACKAGE = "default-jre-headless"
JAVA_START_SECONDS = 60  # `java -version` on a slow, busy machine takes a second or two
ERROR_BYTES = 65536  # what is read of a failed Java process's messages

K = TypeVar("K")

# Characters that the Java tokenizer takes as the end of a line ("\n" pycocoevalcap replaces itself).
_LINE_BREAKS = {ord(c): " " for c in "\n\r\x0b\x0c\u2028\u2029"}


def require_evaluation(option: str) -> None:
    """CaptionError, one line naming what to install, unless pycocoevalcap imports, has its jars, and a
    ``java`` on PATH runs. ``option`` is what needs them ("--references")."""
    try:
        from pycocoevalcap.bleu.bleu import Bleu  # noqa: F401
        from pycocoevalcap.cider.cider import Cider  # noqa: F401
        from pycocoevalcap.meteor import meteor
        from pycocoevalcap.rouge.rouge import Rouge  # noqa: F401
        from pycocoevalcap.tokenizer import ptbtokenizer
    except ImportError:
        raise CaptionError(f"{option} needs pycocoevalcap, which is not installed: {INSTALL}") from None
    jars = [Path(ptbtokenizer.__file__).parent / ptbtokenizer.STANFORD_CORENLP_3_4_1_JAR,
            Path(meteor.__file__).parent / meteor.METEOR_JAR,
            Path(meteor.__file__).parent / "data" / "paraphrase-en.gz"]
    for jar in jars:
        if not jar.is_file():
            raise CaptionError(f"{option}: pycocoevalcap is damaged ({jar.name} is missing): "
                               f"python3 -m pip install --force-reinstall -r requirements-eval.txt")
    java = shutil.which("java")
    install_java = f"install Java (Debian package {JAVA_PACKAGE}: apt-get install {JAVA_PACKAGE})"
    if java is None:
        raise CaptionError(f"{option} needs Java for pycocoevalcap's tokenizer and METEOR, and no java is on "
                           f"PATH: {install_java}")
    try:
        proc = subprocess.run([java, "-version"], capture_output=True, timeout=JAVA_START_SECONDS,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise CaptionError(f"{option} needs Java, and `java -version` did not answer within "
                           f"{JAVA_START_SECONDS} s") from None
    except OSError as exc:
        raise CaptionError(f"{option} needs Java, and {shortened(java)} does not run ({exc.strerror or exc}): "
                           f"{install_java}") from None
    if proc.returncode != 0:
        detail = _first_line(proc.stderr) or f"exit status {proc.returncode}"
        raise CaptionError(f"{option} needs Java, and `java -version` failed ({detail}): {install_java}")


def one_line(caption: str) -> str:
    return caption.translate(_LINE_BREAKS)


def tokenize(captions: Mapping[K, Sequence[str]]) -> dict[K, list[str]]:
    """pycocoevalcap's PTBTokenizer.tokenize on ``captions`` (several per key), in a private folder."""
    from pycocoevalcap.tokenizer import ptbtokenizer

    count = sum(len(texts) for texts in captions.values())
    with tempfile.TemporaryDirectory(prefix="ptb-tokenizer-") as name:
        folder = Path(name)
        jar = ptbtokenizer.STANFORD_CORENLP_3_4_1_JAR
        _link_or_copy(Path(ptbtokenizer.__file__).parent / jar, folder / jar)
        with open(folder / "java-messages", "w+b") as messages:
            java = _TokenizerJava(messages)
            here = {**vars(ptbtokenizer), "__file__": str(folder / "ptbtokenizer.py"), "subprocess": java}
            tokenize_here = types.FunctionType(ptbtokenizer.PTBTokenizer.tokenize.__code__, here)
            records = {k: [{"caption": one_line(t)} for t in texts] for k, texts in captions.items()}
            try:
                tokenized: dict[K, list[str]] = tokenize_here(ptbtokenizer.PTBTokenizer(), records)
            except OSError as exc:  # no java any more (require_evaluation found one), or no room for the file
                raise CaptionError(f"cannot run pycocoevalcap's PTB tokenizer (Java): {exc.strerror or exc}") from None
            lines = java.output.count(b"\n") + 1  # one line per caption, as pycocoevalcap splits them
            if java.returncode != 0 or lines != count:
                messages.seek(0)
                detail = _first_line(messages.read(ERROR_BYTES)) or f"exit status {java.returncode}"
                raise CaptionError(f"pycocoevalcap's PTB tokenizer (Java) failed: {lines} lines for {count} "
                                   f"captions ({detail})")
    return tokenized


class _TokenizerJava:
    """Stands in for the ``subprocess`` module in pycocoevalcap's tokenize: the same Popen, with Java's
    messages going to a file, and its output and exit status kept to be checked."""

    PIPE = subprocess.PIPE

    def __init__(self, messages: IO[bytes]) -> None:
        self._messages = messages
        self._process: subprocess.Popen[bytes] | None = None
        self.output = b""
        self.returncode: int | None = None

    def Popen(self, args: list[str], **kwargs: Any) -> _TokenizerJava:  # noqa: N802 (subprocess's name)
        self._process = subprocess.Popen(args, stdin=subprocess.DEVNULL, stderr=self._messages, **kwargs)
        return self

    def communicate(self, input: object = None) -> tuple[bytes, None]:  # noqa: A002 (Popen's signature)
        # ``input`` is ignored, as by the Popen pycocoevalcap makes (it has no stdin pipe): Java reads the file.
        assert self._process is not None
        output, _ = self._process.communicate()
        self.output, self.returncode = output, self._process.returncode
        return output, None


def _link_or_copy(source: Path, dest: Path) -> None:
    try:
        dest.symlink_to(source)
    except OSError:  # no symbolic links here (some Windows accounts): 6 MB copied instead
        shutil.copyfile(source, dest)


@contextlib.contextmanager
def running_meteor() -> Iterator[Any]:
    """pycocoevalcap's Meteor, whose Java process is stopped and reaped when the block ends."""
    from pycocoevalcap.meteor.meteor import Meteor

    try:
        meteor = Meteor()
    except OSError as exc:
        raise CaptionError(f"cannot start METEOR (Java): {exc.strerror or exc}") from None
    try:
        yield meteor
    finally:
        _stop(meteor)


def meteor_score(meteor: Any, gts: dict[K, list[str]], res: dict[K, list[str]]) -> tuple[float, list[float]]:
    try:
        score, scores = meteor.compute_score(gts, res)
    except (OSError, ValueError):  # its process ended: a broken pipe, or an empty line where a number belongs
        raise CaptionError(f"METEOR (Java) stopped before it finished: {_meteor_error(meteor)}") from None
    return float(score), [float(s) for s in scores]


def _meteor_error(meteor: Any) -> str:
    process: subprocess.Popen[bytes] = meteor.meteor_p
    process.kill()
    status = process.wait()
    detail = _first_line(process.stderr.read(ERROR_BYTES)) if process.stderr is not None else ""
    return detail or f"exit status {status}"


def _stop(meteor: Any) -> None:
    process: subprocess.Popen[bytes] = meteor.meteor_p
    for stream in (process.stdin, process.stdout, process.stderr):
        if stream is not None:
            with contextlib.suppress(OSError):  # a broken pipe while flushing: the process is gone
                stream.close()
    process.kill()
    process.wait()
    # compute_score keeps its lock when it fails midway; __del__ (stdin.close, kill, wait: all done
    # already, so they return at once) would wait for that lock forever.
    meteor.lock = threading.Lock()


def _first_line(messages: bytes) -> str:
    """The line that says what went wrong in a Java process's messages, shortened for one line."""
    lines = [line.strip() for line in messages.decode("utf-8", errors="replace").splitlines() if line.strip()]
    telling = [line for line in lines if "Error" in line or "Exception" in line]
    return shortened((telling or lines or [""])[0], 200)
