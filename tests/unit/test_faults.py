"""The fault-injection hook: its format, its refusals, where it fires, and what each kind does."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from distri.faults import EXIT_CODE, Fault, FaultInjected, fault_for, maybe_fault, parse_fault


def test_parse_fault() -> None:
    assert parse_fault("rank=1,at=start,kind=raise") == Fault(1, "start", "raise")
    assert parse_fault(" kind=hang , rank=0 , at=step:12 ") == Fault(0, "step:12", "hang")
    assert parse_fault("") is None and parse_fault("  ") is None and parse_fault(None) is None


@pytest.mark.parametrize(
    "text, message",
    [
        ("rank=1", "needs exactly the keys rank, at and kind"),
        ("rank=1,at=start,kind=raise,extra=2", "needs exactly the keys"),
        ("rank=one,at=start,kind=raise", "rank must be a global rank"),
        ("rank=-1,at=start,kind=raise", "rank must be a global rank"),
        ("rank=1,at=step,kind=raise", "at must be start or step:N"),
        ("rank=1,at=step:-1,kind=raise", "at must be start or step:N"),
        ("rank=1,at=start,kind=segfault", "kind must be one of raise, exit, hang, freeze"),
        ("rank=1,at,kind=raise", "is not key=value"),
    ],
)
def test_malformed_fault_is_refused_with_the_fix(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as e:
        parse_fault(text)
    assert "rank=1,at=step:2,kind=hang" in str(e.value)  # an example that works


def test_config_key_wins_over_the_environment(monkeypatch) -> None:
    monkeypatch.delenv("DISTRI_FAULT", raising=False)
    assert fault_for(None) is None
    monkeypatch.setenv("DISTRI_FAULT", "rank=1,at=start,kind=raise")
    assert fault_for(None) == Fault(1, "start", "raise")
    assert fault_for("rank=0,at=step:1,kind=exit") == Fault(0, "step:1", "exit")


def test_maybe_fault_fires_only_on_its_rank_and_point() -> None:
    fault = Fault(1, "step:2", "raise")
    maybe_fault(None, 1, "step:2")
    maybe_fault(fault, 0, "step:2")
    maybe_fault(fault, 1, "step:1")
    maybe_fault(fault, 1, "start")
    with pytest.raises(FaultInjected, match="asked rank 1 to fail at step:2"):
        maybe_fault(fault, 1, "step:2")


@pytest.mark.parametrize("kind, code", [("exit", EXIT_CODE), ("freeze", None), ("hang", None)])
def test_each_kind_does_what_it_says(kind: str, code: int | None) -> None:
    """exit ends the process with EXIT_CODE; freeze stops it (SIGSTOP); hang keeps it alive, asleep."""
    script = f"from distri.faults import Fault; Fault(0, 'start', {kind!r}).trigger()"
    p = subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.PIPE, text=True)
    try:
        assert p.stderr.readline().strip() == f"distri fault: {kind} at start on rank 0"
        if code is not None:
            assert p.wait(timeout=60) == code
        else:
            time.sleep(1.0)
            assert p.poll() is None
            state = open(f"/proc/{p.pid}/stat").read().rsplit(")", 1)[1].split()[0]
            assert state == ("T" if kind == "freeze" else "S")  # stopped / sleeping
    finally:
        p.kill()
        p.wait(timeout=10)
