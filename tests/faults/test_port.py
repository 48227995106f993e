"""The rendezvous port taken between probe and bind: the pool retries on a new free port, and a configured
port that stays taken fails after the retries with a message naming ``runner.port``."""

from __future__ import annotations

import socket

import pytest

import distri.launch as launch


def _listening() -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    s.listen()
    return s


def test_a_port_taken_after_the_probe_is_retried_on_another(monkeypatch):
    busy = _listening()
    ports = iter([busy.getsockname()[1]])
    real = launch.free_port
    monkeypatch.setattr(launch, "free_port", lambda: next(ports, None) or real())
    try:
        with launch.WorkerPool(2, "cpu", timeout_s=60, threads=1) as pool:
            assert pool.run("tests.faults.test_port:rank_of") == [0, 1]
    finally:
        busy.close()


def test_a_configured_port_that_stays_taken_fails_naming_runner_port():
    busy = _listening()
    try:
        with pytest.raises(launch.WorkerError, match="set runner.port"):
            launch.WorkerPool(2, "cpu", timeout_s=60, threads=1, port=busy.getsockname()[1])
    finally:
        busy.close()


def rank_of(env) -> int:
    return env.rank
