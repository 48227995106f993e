"""What a running job says on stderr: one line per phase and a bar of the denoising steps, from rank 0's
progress reports (:class:`distri.worker.env.Report`), which flow to the launching process anyway (the
watchdog reads them), so no rank prints for itself.

On a terminal a phase's line is followed by a tqdm bar of the pipeline call's denoising steps (redrawn at
most every :data:`BAR_MIN_INTERVAL_S`). Elsewhere (CI logs, files) there is no bar: a line when a phase
begins, and within a repeated phase (``timed run 3/5``, ``image 120/5000``) at most one more every
:data:`QUIET_S` seconds, so a log gets a few lines per phase, never a redraw per step.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

from distri.worker.env import Report

BAR_MIN_INTERVAL_S = 0.5
QUIET_S = 10.0


class ProgressDisplay:
    """Call with ``(rank, report)`` for every progress report; only rank 0's are shown. :meth:`close` ends
    the bar. ``stream`` defaults to stderr; ``bar`` defaults to whether it is a terminal."""

    def __init__(self, stream: TextIO | None = None, bar: bool | None = None) -> None:
        self.stream = stream or sys.stderr
        self.use_bar = self.stream.isatty() if bar is None else bar
        self.report: Report | None = None
        self.last_line = 0.0
        self._bar: Any = None

    def __call__(self, rank: int, report: Report | str) -> None:
        if rank != 0:
            return
        if isinstance(report, str):
            report = Report(report)
        before, self.report = self.report, report
        if before is None or report.phase != before.phase:
            self._line(report, force=True)
        elif (report.i, report.n) != (before.i, before.n) and not self.use_bar:
            self._line(report, force=False)
        if report.step is not None and self.use_bar:
            self._draw(
                report, new_call=before is None or (report.phase, report.i) != (before.phase, before.i)
            )

    def _line(self, report: Report, force: bool) -> None:
        now = time.monotonic()
        if not force and now - self.last_line < QUIET_S:
            return
        self.close()
        count = "" if report.i is None else f" {report.i}/{report.n}"
        note = f" ({report.note})" if report.note and report.step is None else ""
        print(f"distri: {report.phase}{count}{note}", file=self.stream, flush=True)
        self.last_line = now

    def _draw(self, report: Report, new_call: bool) -> None:
        from tqdm import tqdm

        desc = report.phase if report.i is None else f"{report.phase} {report.i}/{report.n}"
        if self._bar is None:
            self._bar = tqdm(
                total=report.steps, desc=desc, unit="step", file=self.stream, leave=False,
                mininterval=BAR_MIN_INTERVAL_S, dynamic_ncols=True,
            )  # fmt: skip
        elif new_call or report.step < self._bar.n:
            self._bar.reset(total=report.steps)
            self._bar.set_description(desc, refresh=False)
        self._bar.update(report.step - self._bar.n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
