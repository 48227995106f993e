"""Subprocesses of ``run.py`` for tests that stop them: each in its own session (its workers and helpers share
one process group), and the check that no process of that group is left."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest


def start_in_session(cmd: list[str], cwd: Path, out: Path, err: Path) -> subprocess.Popen:
    """``cmd`` in a new session, unbuffered, stdout and stderr into files, no fault from the environment, and
    SIGINT at its default as in a terminal, however pytest was started: a shell starts a background job (``(pytest
    ... &)``) with SIGINT ignored, a child inherits that, and Python then never raises KeyboardInterrupt, so the
    Ctrl-C tests would fail (seen at stop 23). A handler set here is reset to the default by ``exec``; an ignored
    signal is not, hence the handler for the moment of the start (main thread only)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    env.pop("DISTRI_FAULT", None)
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with open(err, "w") as e, open(out, "w") as o:
            return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=o, stderr=e, start_new_session=True)
    finally:
        signal.signal(signal.SIGINT, before)


def assert_group_gone(pgid: int, within_s: float) -> None:
    """No process of the group ``pgid`` may run ``within_s`` seconds from now (else they are killed)."""
    deadline = time.monotonic() + within_s
    while True:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        if time.monotonic() > deadline:
            os.killpg(pgid, signal.SIGKILL)
            pytest.fail(f"processes of the job were still running {within_s:g} s after it ended")
        time.sleep(0.2)
