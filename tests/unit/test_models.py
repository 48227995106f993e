"""Tiny models, loader, samplers and generate(): fast CPU checks."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
from PIL import Image

from distri.generate import generate, save_png, to_pil
from distri.models.loader import ModelNotFoundError, check_available, load_pipeline, placement_kwargs
from distri.models.tiny import MODEL_MAX_LENGTH, TINY_MODELS, TINY_RESOLUTION, build_tiny
from distri.samplers import SAMPLERS, make_scheduler

FAMILY = {"tiny_sdxl": "sdxl", "tiny_sd15": "sd"}
PROMPT = "a watercolor painting of a lighthouse at sunset"


def _cfg(name: str, cache_dir: str) -> dict:
    return {
        "name": name,
        "family": FAMILY[name],
        "source": "tiny",
        "id": None,
        "revision": None,
        "variant": None,
        "cache_dir": cache_dir,
    }


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These models are tiny: one intra-op thread is faster, and immune to other processes using the cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("distri_cache")
    for name in TINY_MODELS:
        build_tiny(name, str(root))
    return str(root)


@pytest.fixture(scope="module")
def pipes(cache_dir) -> dict:
    return {name: load_pipeline(_cfg(name, cache_dir)) for name in TINY_MODELS}


def test_build_is_cached_and_complete(cache_dir):
    for name in TINY_MODELS:
        path = build_tiny(name, cache_dir)
        assert path.name == name
        assert (path / "model_index.json").is_file()
        assert (path / "unet" / "config.json").is_file()
        assert not [p for p in path.parent.iterdir() if ".tmp-" in p.name]


def test_concurrent_builds(tmp_path):
    """Several builders at once: one builds, the others wait for the lock and reuse its folder."""
    results, errors = [], []

    def worker():
        try:
            results.append(build_tiny("tiny_sd15", str(tmp_path)))
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert results == [tmp_path / "tiny_sd15"] * 3
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")) == ["tiny_sd15"]


def test_stale_folder_is_replaced(tmp_path):
    stale = tmp_path / "tiny_sd15"
    stale.mkdir()
    (stale / "model_index.json").write_text("{}")
    (stale / "distri_tiny.json").write_text('{"fingerprint": "old"}')
    path = build_tiny("tiny_sd15", str(tmp_path))
    assert path == stale and (path / "unet" / "config.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")) == ["tiny_sd15"]


def test_build_is_deterministic(cache_dir, tmp_path, pipes):
    """A fresh build in another folder has the same weights as the cached one."""
    fresh = load_pipeline(_cfg("tiny_sd15", str(tmp_path)))
    cached = pipes["tiny_sd15"]
    for comp in ("unet", "vae", "text_encoder"):
        a, b = getattr(fresh, comp).state_dict(), getattr(cached, comp).state_dict()
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), comp


@pytest.mark.parametrize("name", TINY_MODELS)
def test_load_twice_identical(cache_dir, pipes, name):
    again = load_pipeline(_cfg(name, cache_dir))
    for comp in ("unet", "vae", "text_encoder"):
        a, b = getattr(again, comp).state_dict(), getattr(pipes[name], comp).state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a), comp


def test_shapes(pipes):
    xl, sd = pipes["tiny_sdxl"], pipes["tiny_sd15"]
    assert isinstance(xl, StableDiffusionXLPipeline) and isinstance(sd, StableDiffusionPipeline)
    assert sd.safety_checker is None
    for pipe, levels in ((xl, 3), (sd, 4)):
        cfg = pipe.unet.config
        assert len(cfg.block_out_channels) == levels
        assert sum(b.downsamplers is not None for b in pipe.unet.down_blocks) == levels - 1
        assert pipe.vae_scale_factor == 8
        assert cfg.sample_size * pipe.vae_scale_factor == TINY_RESOLUTION
        groups = cfg.norm_num_groups
        assert groups % 4 == 0 and all(c % groups == 0 and c % 4 == 0 for c in cfg.block_out_channels)
        heads = cfg.attention_head_dim  # diffusers' naming: number of heads per level
        assert all(h % 4 == 0 for h in heads)
    assert xl.unet.config.addition_embed_type == "text_time"
    assert xl.unet.config.cross_attention_dim == (
        xl.text_encoder.config.hidden_size + xl.text_encoder_2.config.hidden_size
    )


@pytest.mark.parametrize("name", TINY_MODELS)
def test_tokenizer_long_and_unusual(pipes, name):
    pipe = pipes[name]
    tokenizers = [pipe.tokenizer] + ([pipe.tokenizer_2] if name == "tiny_sdxl" else [])
    long_prompt = " ".join(["an extremely detailed photograph of a mountain lake"] * 40)
    odd = "Café «naïve» 東京 🐱🚀 tab\there\nnewline ~!@#$%^&*()_+{}|:<>? 123.45 ÆØÅ"
    for tok in tokenizers:
        assert tok.model_max_length == MODEL_MAX_LENGTH
        ids = tok(long_prompt, padding="max_length", max_length=77, truncation=True).input_ids
        assert len(ids) == MODEL_MAX_LENGTH
        assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
        odd_ids = tok(odd).input_ids
        assert tok.unk_token_id not in odd_ids[1:-1]  # every byte is in the vocabulary
        assert odd_ids[-1] == tok.eos_token_id
        assert len(tok("the cat and the dog").input_ids) < len("the cat and the dog") + 2  # merges apply
    # the pipeline itself accepts both prompts (truncating the long one)
    for prompt in (long_prompt, odd):
        img = generate(pipe, prompt, seed=0, num_inference_steps=1, guidance_scale=5.0, height=64, width=64)
        assert torch.isfinite(img).all()


def _direct_pipe(name: str, pipe):
    components = dict(pipe.components)
    components["scheduler"] = type(pipe.scheduler).from_config(pipe.scheduler.config)
    if name == "tiny_sdxl":
        direct = StableDiffusionXLPipeline(**components, add_watermarker=False)
    else:
        components.update(safety_checker=None, feature_extractor=None)
        direct = StableDiffusionPipeline(**components, requires_safety_checker=False)
    direct.set_progress_bar_config(disable=True)
    return direct


@pytest.mark.parametrize(
    "name,sampler",
    [
        ("tiny_sdxl", "ddim"),
        ("tiny_sdxl", "euler"),
        ("tiny_sd15", "ddim"),
        ("tiny_sd15", "euler"),
        ("tiny_sd15", "dpmpp"),
    ],
)
def test_generate_matches_direct_pipeline(pipes, name, sampler):
    pipe = pipes[name]
    pipe.scheduler = make_scheduler(sampler, pipe.scheduler.config)
    direct = _direct_pipe(name, pipe)
    steps, seed = 3, 1234
    img = generate(
        pipe, PROMPT, seed=seed, num_inference_steps=steps, guidance_scale=5.0, height=64, width=64
    )
    ref = direct(
        prompt=PROMPT,
        num_inference_steps=steps,
        guidance_scale=5.0,
        height=64,
        width=64,
        generator=torch.Generator("cpu").manual_seed(seed),
        output_type="pt",
    ).images[0]
    assert img.shape == (3, 64, 64) and img.dtype == torch.float32 and img.device.type == "cpu"
    assert 0.0 <= img.min() and img.max() <= 1.0
    assert torch.equal(img, ref)
    other = generate(
        pipe, PROMPT, seed=seed + 1, num_inference_steps=steps, guidance_scale=5.0, height=64, width=64
    )
    assert not torch.equal(img, other)


def test_callback_and_png(pipes, tmp_path):
    pipe = pipes["tiny_sd15"]
    pipe.scheduler = make_scheduler("ddim", pipe.scheduler.config)
    seen = []

    def callback(p, step, timestep, kwargs):
        seen.append((step, int(timestep), tuple(kwargs["latents"].shape)))
        return kwargs

    img = generate(
        pipe,
        PROMPT,
        seed=0,
        num_inference_steps=2,
        guidance_scale=5.0,
        height=64,
        width=64,
        callback=callback,
    )
    assert [s for s, _, _ in seen] == [0, 1] and seen[0][2] == (1, 4, 8, 8)
    assert to_pil(img).size == (64, 64)
    path = save_png(img, tmp_path / "sub" / "img.png")
    back = torch.from_numpy(np.array(Image.open(path))).permute(2, 0, 1)
    assert torch.equal(back, (img * 255).round().to(torch.uint8))


def test_samplers():
    base = {
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "steps_offset": 1,
        "timestep_spacing": "leading",
        "clip_sample": False,
        "set_alpha_to_one": False,
    }
    names = {name: type(make_scheduler(name, base)).__name__ for name in SAMPLERS}
    assert names == {
        "ddim": "DDIMScheduler",
        "euler": "EulerDiscreteScheduler",
        "dpmpp": "DPMSolverMultistepScheduler",
    }
    dpm = make_scheduler("dpmpp", base)
    assert dpm.config.algorithm_type == "dpmsolver++" and dpm.config.solver_order == 2
    ddim = make_scheduler("ddim", base)
    assert ddim.config.clip_sample is False and ddim.config.timestep_spacing == "leading"
    with pytest.raises(ValueError, match="ddim, euler, dpmpp"):
        make_scheduler("heun", base)


def test_tiny_scheduler_config_carries_ddim_keys(pipes):
    ddim = make_scheduler("ddim", pipes["tiny_sdxl"].scheduler.config)
    assert ddim.config.clip_sample is False and ddim.config.set_alpha_to_one is False
    assert ddim.config.beta_schedule == "scaled_linear" and ddim.config.steps_offset == 1


@pytest.mark.parametrize(
    "model_id", ["made-up-org/no-such-model-xyz", "/definitely/not/a/real/folder/sdxl", "no-such-model-xyz"]
)
def test_missing_real_model_raises(monkeypatch, tmp_path, model_id):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    cfg = {"name": "sdxl", "family": "sdxl", "source": "hub", "id": model_id, "revision": None}
    cfg.update(variant="fp16", cache_dir=str(tmp_path / "hf"))
    with pytest.raises(ModelNotFoundError, match="not found") as info:
        load_pipeline(cfg)
    assert model_id in str(info.value)
    assert "model.id=" in str(info.value)
    assert isinstance(info.value, RuntimeError)


def test_bad_configs(cache_dir):
    with pytest.raises(ValueError, match="family"):
        load_pipeline({"name": "tiny_sdxl", "family": "sd", "source": "tiny", "cache_dir": cache_dir})
    with pytest.raises(ValueError, match="unknown tiny model"):
        load_pipeline({"name": "tiny_sd3", "family": "sd", "source": "tiny", "cache_dir": cache_dir})
    with pytest.raises(ValueError, match="model.family"):
        load_pipeline({"name": "x", "family": "flux", "source": "hub", "id": "a/b"})


@pytest.mark.parametrize("name", TINY_MODELS)
def test_low_memory_load_equals_a_plain_load(cache_dir, pipes, name, monkeypatch):
    """load_pipeline asks for low host memory and a device map (the device type), and gets exactly the weights
    of a plain ``from_pretrained`` (random init, then the checkpoint, on the host), without accelerate hooks."""
    cls = type(pipes[name])
    seen = {}
    real = cls.from_pretrained.__func__

    def spy(klass, *args, **kwargs):
        seen.update(kwargs)
        return real(klass, *args, **kwargs)

    monkeypatch.setattr(cls, "from_pretrained", classmethod(spy))
    pipe = load_pipeline(_cfg(name, cache_dir), "cpu")
    monkeypatch.undo()
    assert seen["low_cpu_mem_usage"] is True and seen["device_map"] == "cpu"
    plain = cls.from_pretrained(str(build_tiny(name, cache_dir)), low_cpu_mem_usage=False)
    for comp in ("unet", "vae", "text_encoder"):
        module = getattr(pipe, comp)
        assert not any(hasattr(m, "_hf_hook") for m in module.modules()), comp
        a, b = module.state_dict(), getattr(plain, comp).state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), comp


def test_placement_kwargs(monkeypatch):
    assert placement_kwargs("cpu") == {"low_cpu_mem_usage": True, "device_map": "cpu"}
    # diffusers' list on a GPU machine (it holds the detected accelerator type and "cpu")
    monkeypatch.setattr(
        "diffusers.pipelines.pipeline_utils.SUPPORTED_DEVICE_MAP", ["balanced", "cuda", "cpu"]
    )
    assert placement_kwargs(torch.device("cuda", 1))["device_map"] == "cuda"  # loaded under cuda.device(1)
    assert placement_kwargs("meta") == {"low_cpu_mem_usage": True}  # no device map diffusers would accept


def test_corrupt_cached_model_is_rebuilt_and_stale_temp_folders_removed(tmp_path):
    """A truncated weights file no longer matches the marker's checksum: the next build_tiny rebuilds it;
    a killed build's temporary folder is cleaned up by the next build."""
    path = build_tiny("tiny_sd15", str(tmp_path))
    weights = path / "unet" / "diffusion_pytorch_model.safetensors"
    good = weights.read_bytes()
    weights.write_bytes(good[: len(good) // 2])
    (tmp_path / ".tiny_sd15.tmp-killed").mkdir()
    assert build_tiny("tiny_sd15", str(tmp_path)) == path
    assert weights.read_bytes() == good
    assert not list(tmp_path.glob(".tiny_sd15.tmp-*"))


def test_pickled_weights_need_allow_pickle(cache_dir, pipes, tmp_path):
    """Safetensors only by default; a folder with pickled (.bin) weights loads with allow_pickle=true."""
    folder = tmp_path / "pickled"
    pipes["tiny_sd15"].save_pretrained(folder, safe_serialization=False)
    cfg = {"name": "sd15", "family": "sd", "source": "hub", "id": str(folder)}
    with pytest.raises(Exception, match="safetensors"):
        load_pipeline(cfg)
    pipe = load_pipeline({**cfg, "allow_pickle": True})
    assert torch.equal(pipe.unet.conv_out.weight, pipes["tiny_sd15"].unet.conv_out.weight)


def test_check_available_is_short_and_names_the_fix(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = {
        "name": "sdxl",
        "family": "sdxl",
        "source": "hub",
        "id": "stabilityai/stable-diffusion-xl-base-1.0",
    }
    with pytest.raises(ModelNotFoundError) as info:
        check_available({**cfg, "cache_dir": str(tmp_path / "hf")})
    text = str(info.value)
    assert "hf download stabilityai/stable-diffusion-xl-base-1.0" in text and len(text) < 600
    check_available({"name": "tiny_sdxl", "source": "tiny"})  # built locally: nothing to check
