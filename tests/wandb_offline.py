"""A reader of W&B offline runs for the tests (wandb 0.31 has no public interface that reads one back).

Parses ``run-<id>.wandb`` (W&B's append-only protobuf log, leveldb-log framing; CRCs are not verified) with
wandb's own protobuf classes. ``wandb.Run.finish()`` returns before W&B's background service has flushed the
file, so :func:`read_offline_run` first waits (up to ``wait_s``) until the file ends with its exit record.
"""

from __future__ import annotations

import json
import os
import struct
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

_WANDB_HEADER_LEN = 7  # b":W&B" + uint16 magic 0xBEE1 + uint8 version
_BLOCK = 32768  # leveldb-log style: records never straddle a 32 KiB block header
_REC_HEADER = struct.Struct("<IHB")  # crc32c, length, type (1 full, 2 first, 3 middle, 4 last)


def _iter_wandb_records(path: Path) -> Iterator[bytes]:
    data = path.read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path} is not a .wandb transaction log")
    pos, chunks = _WANDB_HEADER_LEN, []
    while pos + _REC_HEADER.size <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < _REC_HEADER.size:  # block trailer padding
            pos += left
            continue
        _crc, length, rtype = _REC_HEADER.unpack_from(data, pos)
        pos += _REC_HEADER.size
        if rtype == 0 and length == 0:
            continue
        if pos + length > len(data):  # a record still being written
            return
        chunks.append(data[pos : pos + length])
        pos += length
        if rtype in (1, 4):
            yield b"".join(chunks)
            chunks = []


def _has_exit_record(path: Path) -> bool:
    from wandb.proto import wandb_internal_pb2 as pb

    try:
        raws = list(_iter_wandb_records(path))
    except (OSError, ValueError):
        return False
    for raw in reversed(raws):
        rec = pb.Record()
        try:
            rec.ParseFromString(raw)
        except Exception:  # a partially written record
            continue
        if rec.WhichOneof("record_type") == "exit":
            return True
    return False


def _wait_for_exit_record(run_dir: Path, timeout_s: float) -> bool:
    """Poll ``run_dir/*.wandb`` until it holds an exit record (the run's stream has closed and flushed)."""
    deadline = time.monotonic() + timeout_s
    delay = 0.02
    while True:
        logs = sorted(Path(run_dir).glob("*.wandb"))
        if logs and _has_exit_record(logs[0]):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(delay)
        delay = min(delay * 1.5, 0.25)


def _set_nested(d: dict, keys: Sequence[str], value: Any) -> None:
    for k in keys[:-1]:
        nxt = d.get(k)
        if not isinstance(nxt, dict):
            nxt = d[k] = {}
        d = nxt
    d[keys[-1]] = value


def _item_keys(item: Any) -> list[str]:
    return list(item.nested_key) if len(item.nested_key) else [item.key]


def read_offline_run(run_dir: str | os.PathLike, wait_s: float = 60.0) -> dict[str, Any]:
    """Read a W&B run directory (e.g. ``.../wandb/offline-run-<ts>-<id>``) back without any network.

    Parses ``run-<id>.wandb`` (W&B's append-only protobuf log; CRCs are not verified) with wandb's own
    protobuf classes and returns ``{"run_id", "project", "group", "name", "tags", "config", "summary",
    "history", "files", "exit_code"}`` where ``summary`` is the final summary (all updates applied),
    ``history`` a list of logged steps (dicts; images appear as their W&B JSON descriptors) and ``files``
    the paths under ``files/`` on disk.
    """
    from wandb.proto import wandb_internal_pb2 as pb

    run_dir = Path(run_dir)
    if not _wait_for_exit_record(run_dir, wait_s):
        raise TimeoutError(f"W&B run files in {run_dir} not complete after {wait_s:g} s")
    logs = sorted(run_dir.glob("*.wandb"))
    if not logs:
        raise FileNotFoundError(f"no .wandb file in {run_dir}")
    out: dict[str, Any] = {
        "run_id": None,
        "project": None,
        "group": None,
        "name": None,
        "tags": [],
        "config": {},
        "summary": {},
        "history": [],
        "files": [],
        "exit_code": None,
    }

    def apply_config(cfg_rec: Any) -> None:
        for item in cfg_rec.update:
            _set_nested(out["config"], _item_keys(item), json.loads(item.value_json))
        for item in cfg_rec.remove:
            keys = _item_keys(item)
            d = out["config"]
            for k in keys[:-1]:
                d = d.get(k, {})
            d.pop(keys[-1], None)

    for raw in _iter_wandb_records(logs[0]):
        rec = pb.Record()
        rec.ParseFromString(raw)
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            r = rec.run
            out.update(run_id=r.run_id, project=r.project, group=r.run_group, name=r.display_name)
            out["tags"] = list(r.tags)
            apply_config(r.config)
        elif kind == "config":
            apply_config(rec.config)
        elif kind == "summary":
            for item in rec.summary.update:
                _set_nested(out["summary"], _item_keys(item), json.loads(item.value_json))
            for item in rec.summary.remove:
                keys = _item_keys(item)
                d = out["summary"]
                for k in keys[:-1]:
                    d = d.get(k, {})
                d.pop(keys[-1], None)
        elif kind == "history":
            step: dict[str, Any] = {}
            for item in rec.history.item:
                _set_nested(step, _item_keys(item), json.loads(item.value_json))
            out["history"].append(step)
        elif kind == "exit":
            out["exit_code"] = rec.exit.exit_code
    files_dir = run_dir / "files"
    if files_dir.is_dir():
        out["files"] = sorted(str(p.relative_to(files_dir)) for p in files_dir.rglob("*") if p.is_file())
    return out
