"""Tiny, randomly initialised SDXL- and SD-1.5-shaped pipelines, built locally with no download.

``build_tiny(name)`` builds the pipeline from the small config dicts in this module with fixed torch seeds
(the same weights on every build with the same torch version) and saves it with ``save_pretrained`` into
``<cache_dir>/<name>``, so that the loader can read it back with the same ``from_pretrained`` code path as real
weights. The default cache dir is ``$DISTRI_CACHE/tiny`` or ``~/.cache/distri/tiny``. Weights are PyTorch's
default init, except the UNet's ``conv_out``, scaled by 3 so the noise prediction has roughly unit std.

Shapes (both models: default resolution 256x256, VAE scale factor 8, so a 32x32x4 latent):

* ``tiny_sdxl``: UNet with 3 resolution levels (2 downsamplers), ``block_out_channels=(32, 64, 64)``,
  down blocks ``DownBlock2D, CrossAttnDownBlock2D, CrossAttnDownBlock2D``, heads ``(4, 8, 8)`` of dim 8,
  transformer layers ``(1, 1, 2)``, GroupNorm with 8 groups, cross-attention dim 64 (two CLIP text encoders of
  width 32, concatenated), SDXL added conditioning ``addition_embed_type="text_time"``.
* ``tiny_sd15``: UNet with 4 resolution levels (3 downsamplers), ``block_out_channels=(32, 32, 64, 64)``,
  down blocks ``CrossAttnDownBlock2D`` x3 + ``DownBlock2D``, heads ``(4, 4, 8, 8)`` of dim 8, GroupNorm with
  8 groups, cross-attention dim 64 (one CLIP text encoder of width 64).

Every UNet channel count, the group count and every head count are divisible by 4, so tensor parallelism can
split them across up to 4 ranks.

The CLIP tokenizers are byte-level BPE tokenizers written here: all 256 byte symbols (with and without the
``</w>`` end-of-word suffix, as in CLIP, so no input ever maps to the unknown token), a few English merges, and
``<|startoftext|>`` / ``<|endoftext|>``; ``model_max_length`` is 77.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock

from distri.models.tokenizer import BOS, EOS, MERGE_WORDS, MODEL_MAX_LENGTH, build_tokenizer

TINY_MODELS: tuple[str, ...] = ("tiny_sdxl", "tiny_sd15")
"""The tiny models (tests and the default run use them)."""

LOCAL_MODELS: tuple[str, ...] = (*TINY_MODELS, "small_sdxl")
"""Names accepted by :func:`build_tiny`: the tiny models plus ``small_sdxl`` (for speed measurements)."""

TINY_RESOLUTION = 256
"""Default image side of both tiny models (``unet.sample_size * vae_scale_factor``)."""

# Bump when the build procedure changes in a way the config dicts below do not capture.
_BUILD_VERSION = 1
_MARKER = "distri_tiny.json"


_SCHEDULER_COMMON: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "trained_betas": None,
    "prediction_type": "epsilon",
    "steps_offset": 1,
    "timestep_spacing": "leading",
    # Keys of compatible schedulers, kept in the saved config (as in the real SDXL scheduler_config.json) so
    # that e.g. ``DDIMScheduler.from_config`` gets clip_sample=False and set_alpha_to_one=False.
    "clip_sample": False,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "sample_max_value": 1.0,
    "interpolation_type": "linear",
    "use_karras_sigmas": False,
}


def text_config(hidden: int, layers: int, heads: int, act: str, projection_dim: int) -> dict[str, Any]:
    return {
        "hidden_size": hidden,
        "intermediate_size": 2 * hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "max_position_embeddings": MODEL_MAX_LENGTH,
        "hidden_act": act,
        "layer_norm_eps": 1e-5,
        "projection_dim": projection_dim,
    }


_SPECS: dict[str, dict[str, Any]] = {
    "tiny_sdxl": {
        "family": "sdxl",
        "unet": {
            "sample_size": TINY_RESOLUTION // 8,
            "in_channels": 4,
            "out_channels": 4,
            "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
            "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
            "block_out_channels": [32, 64, 64],
            "layers_per_block": 2,
            # diffusers' historical naming: attention_head_dim is the number of heads (as in the SDXL config).
            "attention_head_dim": [4, 8, 8],
            "transformer_layers_per_block": [1, 1, 2],
            "norm_num_groups": 8,
            "cross_attention_dim": 64,
            "use_linear_projection": True,
            "addition_embed_type": "text_time",
            "addition_time_embed_dim": 8,
            # 6 time ids x addition_time_embed_dim + pooled text embedding (text_encoder_2.projection_dim).
            "projection_class_embeddings_input_dim": 6 * 8 + 32,
            "upcast_attention": False,
        },
        "vae": {"scaling_factor": 0.13025},
        "text_encoder": text_config(32, 3, 4, "quick_gelu", 32),
        "text_encoder_2": text_config(32, 3, 4, "gelu", 32),
        "tokenizer": {"pad_token": EOS},
        "tokenizer_2": {"pad_token": "!"},
        "scheduler": {"_class_name": "EulerDiscreteScheduler", **_SCHEDULER_COMMON},
    },
    "tiny_sd15": {
        "family": "sd",
        "unet": {
            "sample_size": TINY_RESOLUTION // 8,
            "in_channels": 4,
            "out_channels": 4,
            "down_block_types": [
                "CrossAttnDownBlock2D",
                "CrossAttnDownBlock2D",
                "CrossAttnDownBlock2D",
                "DownBlock2D",
            ],
            "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
            "block_out_channels": [32, 32, 64, 64],
            # 1 (real SD-1.5: 2) keeps a CFG step at 256x256 cheap: self-attention over the 32x32 latent
            # dominates the cost and happens once per layer at the first level.
            "layers_per_block": 1,
            "attention_head_dim": [4, 4, 8, 8],
            "norm_num_groups": 8,
            "cross_attention_dim": 64,
            "use_linear_projection": False,
        },
        "vae": {"scaling_factor": 0.18215},
        "text_encoder": text_config(64, 3, 4, "quick_gelu", 64),
        "tokenizer": {"pad_token": EOS},
        "scheduler": {"_class_name": "DDIMScheduler", **_SCHEDULER_COMMON},
    },
}

# SDXL's proportions at a small scale, for speed measurements: head dim 64 and channels growing 1:2:4 as in
# SDXL, so attention is a realistic share of the step (the tiny models' 8-wide heads make it dominate).
# One CFG step at 256x256 takes ~0.27 s on one CPU thread. 31 M UNet parameters. Otherwise tiny_sdxl.
_SPECS["small_sdxl"] = json.loads(json.dumps(_SPECS["tiny_sdxl"]))
_SPECS["small_sdxl"]["unet"].update(
    block_out_channels=[64, 128, 256], attention_head_dim=[1, 2, 4], norm_num_groups=32
)

_VAE_COMMON: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [8, 8, 16, 16],
    "layers_per_block": 1,
    "latent_channels": 4,
    "norm_num_groups": 4,
    "sample_size": TINY_RESOLUTION,
}

_SEEDS = {"unet": 0, "vae": 1, "text_encoder": 2, "text_encoder_2": 3}
# The UNet's conv_out weights are scaled by this after the default init so that its noise prediction has roughly
# unit std for unit-variance latents; this triples the UNet's (and the prompt's) share of the final image
# without saturating it.
_CONV_OUT_GAIN = 3.0


def default_cache_dir() -> Path:
    """Where tiny models go by default: ``$DISTRI_CACHE/tiny``, else ``~/.cache/distri/tiny``."""
    base = os.environ.get("DISTRI_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "distri")
    return Path(base) / "tiny"


def tiny_spec(name: str) -> dict[str, Any]:
    """The config dicts ``name`` is built from (a deep copy). Raises ValueError for an unknown name."""
    if name not in _SPECS:
        raise ValueError(f"unknown tiny model {name!r}; valid: {', '.join(LOCAL_MODELS)}")
    spec = json.loads(json.dumps(_SPECS[name]))
    spec["vae"] = {**_VAE_COMMON, **spec["vae"]}
    return spec


def _fingerprint(spec: dict[str, Any]) -> str:
    blob = json.dumps(
        {
            "build_version": _BUILD_VERSION,
            "spec": spec,
            "seeds": _SEEDS,
            "conv_out_gain": _CONV_OUT_GAIN,
            "merge_words": MERGE_WORDS,
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Run the body with torch's CPU RNG seeded with ``seed``; the caller's RNG state is restored afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def build_components(name: str, workdir: str | os.PathLike) -> dict[str, Any]:
    """Build the pipeline components of tiny model ``name`` in memory (float32, CPU).

    ``workdir`` receives the tokenizer's vocab.json and merges.txt. The result can be passed as keyword
    arguments to ``StableDiffusionXLPipeline`` (tiny_sdxl) or ``StableDiffusionPipeline`` (tiny_sd15, which
    also needs ``safety_checker=None, feature_extractor=None, requires_safety_checker=False``).
    """
    components = components_from_spec(tiny_spec(name), workdir, _SEEDS, MERGE_WORDS)
    unet = components["unet"]
    with torch.no_grad():  # default init predicts noise of std ~0.3; a trained epsilon model's is ~1
        unet.conv_out.weight.mul_(_CONV_OUT_GAIN)
        unet.conv_out.bias.mul_(_CONV_OUT_GAIN)
    return components


def components_from_spec(
    spec: dict[str, Any], workdir: str | os.PathLike, seeds: dict[str, int], words: Sequence[str]
) -> dict[str, Any]:
    """Pipeline components from config dicts shaped like :func:`tiny_spec`'s, each module initialised with
    torch's default init under its seed in ``seeds``; the tokenizers merge ``words`` (files in ``workdir``)."""
    from diffusers import AutoencoderKL, DDIMScheduler, EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    workdir = Path(workdir)
    with _seeded(seeds["unet"]):
        unet = UNet2DConditionModel(**spec["unet"])
    with _seeded(seeds["vae"]):
        vae = AutoencoderKL(**spec["vae"])
    sched_cfg = dict(spec["scheduler"])
    sched_cls = {"EulerDiscreteScheduler": EulerDiscreteScheduler, "DDIMScheduler": DDIMScheduler}[
        sched_cfg.pop("_class_name")
    ]
    scheduler = sched_cls.from_config(sched_cfg)

    components: dict[str, Any] = {"unet": unet, "vae": vae, "scheduler": scheduler}
    suffixes = ["", "_2"] if spec["family"] == "sdxl" else [""]
    for suffix in suffixes:
        tokenizer = build_tokenizer(
            workdir / f"tokenizer{suffix}", spec[f"tokenizer{suffix}"]["pad_token"], words
        )
        vocab = tokenizer.get_vocab()
        text_cfg = CLIPTextConfig(
            **spec[f"text_encoder{suffix}"],
            vocab_size=len(vocab),
            bos_token_id=vocab[BOS],
            eos_token_id=vocab[EOS],
            pad_token_id=vocab[tokenizer.pad_token],
        )
        model_cls = CLIPTextModelWithProjection if suffix == "_2" else CLIPTextModel
        with _seeded(seeds[f"text_encoder{suffix}"]):
            text_encoder = model_cls(text_cfg)
        components[f"tokenizer{suffix}"] = tokenizer
        components[f"text_encoder{suffix}"] = text_encoder.eval()
    return components


@contextlib.contextmanager
def quiet_progress_bars() -> Iterator[None]:
    """Hide diffusers' and transformers' loading/saving progress bars in the body; restore them afterwards."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    states = []
    for mod in (diffusers_logging, transformers_logging):
        states.append((mod, mod.is_progress_bar_enabled()))
        mod.disable_progress_bar()
    try:
        yield
    finally:
        for mod, enabled in states:
            if enabled:
                mod.enable_progress_bar()


def _checksums(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder`` but the marker, by relative path."""
    out = {}
    for f in sorted(folder.rglob("*")):
        if f.is_file() and f.name != _MARKER:
            with f.open("rb") as fh:
                out[f.relative_to(folder).as_posix()] = hashlib.file_digest(fh, "sha256").hexdigest()
    return out


def _is_complete(path: Path, fingerprint: str) -> bool:
    """A build of this spec whose files all match the checksums in its marker (a truncated or edited file,
    e.g. from a killed copy or a full disk, makes it incomplete, so it is rebuilt)."""
    marker = path / _MARKER
    if not (marker.is_file() and (path / "model_index.json").is_file()):
        return False
    try:
        meta = json.loads(marker.read_text())
    except (OSError, ValueError):
        return False
    return meta.get("fingerprint") == fingerprint and meta.get("files") == _checksums(path)


def build_tiny(name: str, cache_dir: str | None = None) -> Path:
    """Build tiny model ``name`` (``tiny_sdxl`` or ``tiny_sd15``) and return the folder it is saved in.

    The pipeline is saved with ``save_pretrained`` into ``<cache_dir>/<name>`` (``cache_dir`` defaults to
    :func:`default_cache_dir`). If that folder already holds a complete build of the current spec it is returned
    as is. Safe for concurrent callers: a ``FileLock`` serialises builders, and each build is written into a
    temporary folder next to the target and renamed into place, so readers never see a partial folder. A folder
    left by a different spec (the config dicts changed), or whose files no longer match the sha256 checksums
    in its marker, is rebuilt; temporary folders left by a killed build are removed.
    """
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    spec = tiny_spec(name)
    fingerprint = _fingerprint(spec)
    root = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    target = root / name
    if _is_complete(target, fingerprint):
        return target
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / f".{name}.lock")):
        if _is_complete(target, fingerprint):
            return target
        for leftover in root.glob(f".{name}.tmp-*"):  # a killed build's (no builder holds the lock now)
            shutil.rmtree(leftover, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=root))
        try:
            components = build_components(name, tmp / "_tokenizer_src")
            if spec["family"] == "sdxl":
                pipe = StableDiffusionXLPipeline(**components, add_watermarker=False)
            else:
                pipe = StableDiffusionPipeline(
                    **components, safety_checker=None, feature_extractor=None, requires_safety_checker=False
                )
            out = tmp / "pipeline"
            with quiet_progress_bars():
                pipe.save_pretrained(out, safe_serialization=True)
            import diffusers

            marker = {
                "name": name,
                "fingerprint": fingerprint,
                "torch": torch.__version__,
                "diffusers": diffusers.__version__,
                "files": _checksums(out),
            }
            (out / _MARKER).write_text(json.dumps(marker, indent=2) + "\n")
            if target.exists():  # a stale or foreign folder: move it aside, then delete it
                stale = Path(tempfile.mkdtemp(prefix=f".{name}.stale-", dir=root))
                os.replace(target, stale / name)
            os.replace(out, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
            for stale_dir in root.glob(f".{name}.stale-*"):
                shutil.rmtree(stale_dir, ignore_errors=True)
    return target
