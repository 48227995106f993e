"""Fault injection: make one rank of a job raise, exit, hang or freeze on purpose, at start or at a step.

For the fault-matrix tests (``tests/faults/``) and for users checking how their own strategy fails. Ask for a
fault with the config key ``fault`` (``python run.py "fault='rank=1,at=step:2,kind=hang'"``: Hydra needs the
inner quotes) or the environment variable ``DISTRI_FAULT`` (``DISTRI_FAULT=rank=1,at=step:2,kind=hang``; the
config key wins when both are set). Fields, comma-separated ``key=value``, all three required:

* ``rank``: the global rank that fails (an integer);
* ``at``: where: ``start`` (the first thing the rank does in a job, before it loads anything) or ``step:N``
  (right after the denoiser's evaluation for step ``N``, counted from 0, in the rank's first pipeline call:
  a warm-up call if there is one);
* ``kind``: how: ``raise`` (an exception: the job's record says ``failed`` with this rank's traceback),
  ``exit`` (the process ends at once with exit code :data:`EXIT_CODE`, as a crash would), ``hang`` (the rank
  sleeps for ever, still answering heartbeats, as a deadlock would: the watchdog ends the job after
  ``runner.timeout_s`` without progress) or ``freeze`` (the process stops itself with SIGSTOP, as a frozen
  or swapped-out process would: no heartbeat either).

The rank prints ``distri fault: ...`` on stderr just before it fails. A malformed value is refused before any
worker starts (:func:`parse_fault` raises ``ValueError`` naming the fix).
"""

from __future__ import annotations

import os
import signal
import sys
import time
from dataclasses import dataclass, field

ENV_VAR = "DISTRI_FAULT"
KINDS = ("raise", "exit", "hang", "freeze")
EXIT_CODE = 13
EXAMPLE = "rank=1,at=step:2,kind=hang"


class FaultInjected(RuntimeError):
    """The failure a fault of kind ``raise`` asked for."""


@dataclass(frozen=True)
class Fault:
    rank: int
    at: str  # "start" or "step:N"
    kind: str
    source: str = field(default="the config key fault", compare=False)  # who asked, for the message

    def fires(self, rank: int, at: str) -> bool:
        return rank == self.rank and at == self.at

    def trigger(self) -> None:
        """Fail in the way ``kind`` says (returns only for an unknown kind, which parse_fault prevents)."""
        what = f"{self.kind} at {self.at} on rank {self.rank}"
        print(f"distri fault: {what}", file=sys.stderr, flush=True)
        if self.kind == "raise":
            raise FaultInjected(f"{self.source} asked rank {self.rank} to fail at {self.at} ({self.kind})")
        if self.kind == "exit":
            os._exit(EXIT_CODE)
        if self.kind == "freeze":
            os.kill(os.getpid(), signal.SIGSTOP)
        while self.kind == "hang":
            time.sleep(60)


def _problem(text: str, fields: dict[str, str]) -> str | None:
    if set(fields) != {"rank", "at", "kind"}:
        return "needs exactly the keys rank, at and kind"
    if not fields["rank"].isdigit():
        return f"rank must be a global rank (0, 1, ...), got {fields['rank']!r}"
    at = fields["at"]
    if at != "start" and not (at.startswith("step:") and at[5:].isdigit()):
        return f"at must be start or step:N (N = 0, 1, ...: after that denoising step), got {at!r}"
    if fields["kind"] not in KINDS:
        return f"kind must be one of {', '.join(KINDS)}, got {fields['kind']!r}"
    return None


def parse_fault(text: str | None, source: str = "the config key fault") -> Fault | None:
    """Parse a fault description; ``None`` for an empty one. Raises ``ValueError`` with the fix."""
    if text is None or not str(text).strip():
        return None
    fields: dict[str, str] = {}
    for part in str(text).split(","):
        key, sep, value = part.partition("=")
        if not sep or not value.strip():
            raise ValueError(f"fault {text!r}: {part!r} is not key=value; e.g. {EXAMPLE!r}")
        fields[key.strip()] = value.strip()
    problem = _problem(text, fields)
    if problem:
        raise ValueError(f"fault {text!r} {problem}; e.g. fault={EXAMPLE} or {ENV_VAR}={EXAMPLE}")
    return Fault(int(fields["rank"]), fields["at"], fields["kind"], source)


def fault_for(cfg_fault: str | None) -> Fault | None:
    """The fault asked for by the config key (``cfg_fault``), else by ``DISTRI_FAULT``, or ``None``."""
    return parse_fault(cfg_fault) if cfg_fault else parse_fault(os.environ.get(ENV_VAR, ""), ENV_VAR)


def maybe_fault(fault: Fault | None, rank: int, at: str) -> None:
    """Fail here if ``fault`` names this rank and this point."""
    if fault is not None and fault.fires(rank, at):
        fault.trigger()
