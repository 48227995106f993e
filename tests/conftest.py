"""Shared fixtures: a private model cache, and worker pools started once per module."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session", autouse=True)
def _cache_and_offline(tmp_path_factory):
    """Tiny models go to one cache per test session (unless DISTRI_CACHE is set); nothing is fetched."""
    os.environ.setdefault("DISTRI_CACHE", str(tmp_path_factory.getbasetemp() / "distri-cache"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    yield


@pytest.fixture(scope="module")
def cfg_of():
    """``cfg_of(*overrides)``: conf/config.yaml composed with Hydra's overrides, resolved to a plain dict."""
    from hydra import compose, initialize_config_dir
    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf

    from distri.config import register_configs

    register_configs(ConfigStore.instance())
    with initialize_config_dir(
        config_dir=str(Path(__file__).resolve().parents[1] / "conf"), version_base="1.3"
    ):

        def f(*overrides: str) -> dict:
            return OmegaConf.to_container(compose("config", overrides=list(overrides)), resolve=True)

        yield f


def make_pool(world_size: int, timeout_s: float = 300):
    from distri.launch import WorkerPool

    return WorkerPool(world_size, device="cpu", threads=1, timeout_s=timeout_s)


@pytest.fixture(scope="session")
def single_pool():
    """One worker process for world_size=1 checks, shared by the whole session."""
    p = make_pool(1)
    yield p
    p.close()
