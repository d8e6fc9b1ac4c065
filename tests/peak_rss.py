"""The CLI's peak memory, for tests that bound it (docs/limits.md)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from tests.conftest import SCRIPT, cli_env


def peak_rss_mb(args: list[str | Path], timeout: float = 300,
                env: dict[str, str] | None = None) -> tuple[subprocess.CompletedProcess[str], float]:
    """Run the CLI as the only child of a small wrapper that reports that child's peak RSS (with ``env``
    added to the environment).

    Both run in a session of their own, so that a run past ``timeout`` (a hang) is killed whole, the
    CLI included, before subprocess.TimeoutExpired is raised."""
    wrapper = ("import resource, subprocess, sys; p = subprocess.run(sys.argv[1:]); "
               "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); sys.exit(p.returncode)")
    command = [sys.executable, "-c", wrapper, sys.executable, str(SCRIPT), *map(str, args)]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env(env),
                          stdin=subprocess.DEVNULL, start_new_session=True) as running:
        try:
            out, err = running.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(running.pid, signal.SIGKILL)
            running.communicate()
            raise
    *rest, peak = err.strip().splitlines()
    stderr = "\n".join(rest) + ("\n" if rest else "")
    assert "Traceback" not in stderr, stderr
    return subprocess.CompletedProcess(command, running.returncode, out, stderr), int(peak) / 1024
