"""Shared fixtures: a private model cache, and worker pools started once per module."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session", autouse=True)
def _cache_and_offline(tmp_path_factory):
    """Tiny models go to one cache per test session (unless DISTRI_CACHE is set); nothing is fetched."""
    os.environ.setdefault("DISTRI_CACHE", str(tmp_path_factory.getbasetemp() / "distri-cache"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    yield


def make_pool(world_size: int):
    from distri.launch import WorkerPool

    return WorkerPool(world_size, device="cpu", threads=1, timeout_s=300)


@pytest.fixture(scope="session")
def single_pool():
    """One worker process for world_size=1 checks, shared by the whole session."""
    p = make_pool(1)
    yield p
    p.close()
