"""The results store: ``result.json`` per job, one line per job in the sweep's ``results.jsonl``.

Every job writes its record (:mod:`distri.job.record`) twice: ``<job_dir>/result.json`` (pretty-printed,
replaced atomically) and one line appended to ``<sweep_root>/results.jsonl``. Appends are serialised with a
``filelock.FileLock`` on ``results.jsonl.lock`` and written with a single ``O_APPEND`` write, so concurrent
jobs never interleave lines and earlier lines are never rewritten. Importing this module does not import torch.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from distri.job.record import dumps, to_jsonable


def _append_line(path: Path, line: str) -> None:
    data = (line.rstrip("\n") + "\n").encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
        os.fsync(fd)
    finally:
        os.close(fd)


def write_job_file(record: Mapping[str, Any], job_dir: str | os.PathLike) -> Path:
    """Write ``job_dir/result.json`` (indent 2): to a temporary file, renamed into place."""
    job_dir = Path(job_dir)
    job_dir.mkdir(parents=True, exist_ok=True)
    target = job_dir / "result.json"
    tmp = job_dir / f".result.json.{os.getpid()}.tmp"
    tmp.write_text(dumps(record, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, target)
    return target


def append_to_sweep(record: Mapping[str, Any], sweep_root: str | os.PathLike) -> Path:
    """Append the record as one line to ``sweep_root/results.jsonl``, under a lock, in one ``O_APPEND`` write."""
    from filelock import FileLock

    sweep_root = Path(sweep_root)
    sweep_root.mkdir(parents=True, exist_ok=True)
    jsonl = sweep_root / "results.jsonl"
    with FileLock(str(sweep_root / "results.jsonl.lock"), timeout=120):
        _append_line(jsonl, dumps(record))
    return jsonl


def write_result(
    record: Mapping[str, Any], job_dir: str | os.PathLike, sweep_root: str | os.PathLike
) -> None:
    """:func:`write_job_file` then :func:`append_to_sweep`: several processes may call this at once."""
    rec = to_jsonable(record)
    write_job_file(rec, job_dir)
    append_to_sweep(rec, sweep_root)


def read_results(path: str | os.PathLike, strict: bool = False) -> list[dict[str, Any]]:
    """Read a ``results.jsonl`` file (or the ``results.jsonl`` inside a directory), one dict per line.

    Blank lines are skipped. A line that is not a JSON object (e.g. the torn last line of a job killed
    mid-write) raises ``ValueError`` when ``strict``; otherwise it is skipped with a warning.
    """
    p = Path(path)
    if p.is_dir():
        p = p / "results.jsonl"
    records: list[dict[str, Any]] = []
    with open(p, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                if strict:
                    raise ValueError(f"{p}:{lineno}: invalid JSON: {e}") from e
                warnings.warn(f"{p}:{lineno}: skipped a line that is not JSON ({e})", stacklevel=2)
                continue
            if isinstance(rec, dict):
                records.append(rec)
            elif strict:
                raise ValueError(f"{p}:{lineno}: not a JSON object")
            else:
                warnings.warn(f"{p}:{lineno}: skipped a line that is not a JSON object", stacklevel=2)
    return records


def latest_per_job(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The last record of each job (records with equal ``config_hash``; those without one are all kept), in
    file order: a job recorded failed and then run again, or recomputed with ``force=true``, counts once."""
    last = {r["config_hash"]: i for i, r in enumerate(records) if r.get("config_hash")}
    return [r for i, r in enumerate(records) if last.get(r.get("config_hash"), i) == i]


def records_of(sweep_root: str | os.PathLike, digest: str) -> list[dict[str, Any]]:
    """The records with ``config_hash == digest`` in ``sweep_root/results.jsonl``, in file order."""
    path = Path(sweep_root) / "results.jsonl"
    if not path.is_file():
        return []
    with warnings.catch_warnings():  # a torn line of a killed job is not this job's record
        warnings.simplefilter("ignore")
        return [r for r in read_results(path) if r.get("config_hash") == digest]


def check_writable(job_dir: str | os.PathLike, sweep_root: str | os.PathLike) -> None:
    """Fail now (``PermissionError`` naming the file) if the record could not be written at the end."""
    for folder, name in ((Path(job_dir), "result.json"), (Path(sweep_root), "results.jsonl")):
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / name
        try:
            with open(target, "a", encoding="utf-8"):
                pass
        except OSError as e:
            raise PermissionError(
                f"cannot write {target} ({e.strerror}): make it writable, or choose another folder with "
                "hydra.run.dir=... (hydra.sweep.dir=... for a multirun)"
            ) from e
        if name == "result.json" and target.stat().st_size == 0:
            target.unlink()  # only probed; written at the end


class FolderInUse(RuntimeError):
    """Another live job holds the job folder's lock."""


class JobFolderLock:
    """An exclusive ``fcntl`` lock on ``<job_dir>/.distri.lock`` for the job's lifetime (released by the OS
    when the process dies, so a killed job leaves no stale lock). Raises :class:`FolderInUse` at once when
    another live job holds it."""

    NAME = ".distri.lock"

    def __init__(self, job_dir: str | os.PathLike) -> None:
        self.path = Path(job_dir) / self.NAME
        self._fh: Any = None

    def __enter__(self) -> JobFolderLock:
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(self.path, "a+", encoding="utf-8")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "?"
            fh.close()
            raise FolderInUse(
                f"job folder {self.path.parent} is in use by another running job (pid {holder}); give this "
                "job its own folder (hydra.run.dir=..., or hydra.sweep.dir=... for a multirun)"
            ) from None
        fh.truncate(0)
        fh.write(str(os.getpid()))
        fh.flush()
        self._fh = fh
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._fh is not None:
            self._fh.close()  # closing releases the lock
            self._fh = None
