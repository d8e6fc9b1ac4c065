"""The service's shell examples in README.md and docs/service.md, run as written against the real program
serving the test models (on loopback, as tests/service_helpers.py starts it), with a real photo over
96 KB: a photo's base64 in one command-line argument is over Linux's limit for one argument
(`Argument list too long`), so an example that does that fails here.

Each fenced ```sh or ```bash block is cut into its commands (lines are added to a command until
`bash -n` finds it complete); every command that calls the service with curl is run with bash, and
again with sh (POSIX), in a folder holding the photo as photo.jpg. The one change to the text is the
address: 127.0.0.1:8000 becomes the test service's. The ```python blocks that call the service (OpenAI's
client) are run the same way, each as one script.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT
from tests.service_helpers import Service, post_photo, serving

DOCS = [ROOT / "README.md", ROOT / "docs" / "service.md"]
PHOTO = ROOT / "samples" / "rocket.jpg"
ADDRESS = "127.0.0.1:8000"  # the address the examples use
ONE_ARGUMENT = 32 * 4096  # Linux's MAX_ARG_STRLEN: the longest single command-line argument
FENCE = re.compile(r"^```(sh|bash)\n(.*?)^```$", re.MULTILINE | re.DOTALL)
PYTHON_FENCE = re.compile(r"^```python\n(.*?)^```$", re.MULTILINE | re.DOTALL)
TIMEOUT = 60
SHELLS = ["bash"] + (["sh"] if shutil.which("sh") else [])


@dataclass(frozen=True)
class Example:
    doc: Path
    line: int
    text: str

    @property
    def id(self) -> str:
        return f"{self.doc.name}:{self.line}"

    @property
    def path(self) -> str:
        match = re.search(re.escape(ADDRESS) + r"(/[^\s'\"?]*)", self.text)
        assert match, self.text
        return match.group(1)


def complete(text: str) -> bool:
    """Whether ``text`` is whole shell commands (no quote, brace or pipe left open)."""
    return subprocess.run(["bash", "-n"], input=text, text=True, capture_output=True, timeout=TIMEOUT).returncode == 0


def commands(doc: Path) -> Iterator[tuple[int, str]]:
    """The commands of ``doc``'s shell blocks, each with its first line's number."""
    source = doc.read_text(encoding="utf-8")
    for block in FENCE.finditer(source):
        first = source.count("\n", 0, block.start(2)) + 1
        pending: list[str] = []
        start = first
        for number, line in enumerate(block.group(2).splitlines(), first):
            if not pending:
                start = number
            pending.append(line)
            if complete("\n".join(pending) + "\n"):
                yield start, "\n".join(pending)
                pending = []
        assert not pending, f"{doc.name}:{start}: an unfinished command: {pending}"


def examples() -> list[Example]:
    """The commands that call the service: curl with its address."""
    return [Example(doc, line, text) for doc in DOCS for line, text in commands(doc)
            if re.search(r"(^|[\s|;&({])curl\s", text) and ADDRESS in text]


EXAMPLES = examples()


def python_examples() -> list[Example]:
    """The ```python blocks that call the service, each with its first line's number."""
    found = []
    for doc in DOCS:
        source = doc.read_text(encoding="utf-8")
        found += [Example(doc, source.count("\n", 0, block.start(1)) + 1, block.group(1))
                  for block in PYTHON_FENCE.finditer(source) if ADDRESS in block.group(1)]
    return found


PYTHON_EXAMPLES = python_examples()


def test_every_curl_example_is_found() -> None:
    for doc in DOCS:
        blocks = "".join(b.group(2) for b in FENCE.finditer(doc.read_text(encoding="utf-8")))
        found = [e for e in EXAMPLES if e.doc == doc]
        assert len(found) == len(re.findall(r"\bcurl\s", blocks)), doc  # none left out
        assert any(e.path == "/api/generate" for e in found), doc
    assert {e.path for e in EXAMPLES} >= {"/healthz", "/v1/captions", "/api/generate", "/openapi.json",
                                          "/v1/chat/completions", "/v1/responses", "/v1/models"}
    assert PHOTO.stat().st_size > 100_000
    assert len(base64.b64encode(PHOTO.read_bytes())) > ONE_ARGUMENT  # too long for one argument


@pytest.fixture(scope="module")
def service(served_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    with serving(served_models, cwd=tmp_path_factory.mktemp("docs-service"), quiet=False) as running:
        yield running


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the examples run: the photo they name, photo.jpg, is the sample rocket."""
    folder = tmp_path_factory.mktemp("docs-examples")
    shutil.copyfile(PHOTO, folder / "photo.jpg")
    return folder


@pytest.fixture(scope="module")
def caption(service: Service, workdir: Path) -> str:
    """The photo's caption with the server's settings."""
    answer = post_photo(service, workdir / "photo.jpg")
    assert answer.status == 200, answer.body
    return str(answer.json()["caption"])


def shell_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    return {**env, "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1"}  # curl straight to the test service


def check_answer(example: Example, out: str, caption: str) -> None:
    path = example.path
    if path == "/api/generate":
        lines = [json.loads(line) for line in out.splitlines() if line.strip()]  # one object, or NDJSON lines
        assert lines and all("error" not in line for line in lines), out
        assert lines[-1]["done"] is True, out
        assert "".join(line["response"] for line in lines) == caption, out
        assert lines[0]["model"] == "fc_nsc"
        return
    answer: Any = json.loads(out)
    if path == "/healthz":
        assert answer == {"status": "ok"}
    elif path == "/readyz":
        assert answer["status"] == "ready"
    elif path == "/v1/captions":
        assert isinstance(answer["caption"], str) and answer["caption"], out
        if "?" not in example.text:  # the server's settings: the caption the API gives any client
            assert answer["caption"] == caption
    elif path == "/openapi.json":
        assert "/api/generate" in answer["paths"] and "/v1/captions" in answer["paths"]
    elif path == "/v1/chat/completions":
        assert answer["object"] == "chat.completion", out
        assert [c["message"]["content"] for c in answer["choices"]] == [caption], out
    elif path == "/v1/responses":
        assert answer["status"] == "completed" and answer["output"][0]["content"][0]["text"] == caption, out
    elif path == "/v1/models":
        assert [m["id"] for m in answer["data"]] == ["fc_nsc"], out
    else:
        raise AssertionError(f"{example.id}: no check for {path}")


@pytest.mark.parametrize("shell", SHELLS)
@pytest.mark.parametrize("example", EXAMPLES, ids=[e.id for e in EXAMPLES])
def test_the_example_works_as_written(example: Example, shell: str, service: Service, workdir: Path,
                                      caption: str) -> None:
    script = example.text.replace(ADDRESS, f"{service.host}:{service.port}")
    done = subprocess.run([shell, "-c", script], cwd=workdir, env=shell_env(), capture_output=True, text=True,
                          timeout=TIMEOUT)
    assert done.returncode == 0, f"{example.id}: exit status {done.returncode}\n{example.text}\n{done.stderr}"
    check_answer(example, done.stdout, caption)


@pytest.mark.parametrize("example", PYTHON_EXAMPLES, ids=[e.id for e in PYTHON_EXAMPLES])
def test_the_python_example_works_as_written(example: Example, service: Service, workdir: Path,
                                             caption: str) -> None:
    # docs/service.md's OpenAI client example: its chat caption, its Responses caption, then the model list.
    assert example.path == "/v1"
    script = example.text.replace(ADDRESS, f"{service.host}:{service.port}")
    done = subprocess.run([sys.executable, "-c", script], cwd=workdir, env=shell_env(), capture_output=True,
                          text=True, timeout=TIMEOUT)
    assert done.returncode == 0, f"{example.id}: exit status {done.returncode}\n{done.stderr}"
    assert done.stdout.splitlines() == [caption, caption, "['fc_nsc']"], done.stdout
