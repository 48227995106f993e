"""Every config group composes and validates; every bad input gets its message before anything starts."""

from __future__ import annotations

import pytest
from hydra.errors import ConfigCompositionException, MissingConfigException

from distri.config import ConfigError, resolve_dtype, validate

GROUPS = {
    "model": ["shapes_sdxl", "tiny_sdxl", "tiny_sd15", "small_sdxl", "sdxl", "sd15", "sd21"],
    "strategy": ["none", "naive_patch", "displaced_patch", "tensor"],
    "sampler": ["ddim", "euler", "dpmpp"],
    "prompts": ["shapes", "builtin"],
    "metrics": ["default"],
    "logger": ["wandb", "none"],
}


def test_default_is_the_main_job(cfg_of):
    d = cfg_of()
    validate(d)
    assert (d["model"]["name"], d["strategy"]["name"], d["world_size"]) == (
        "shapes_sdxl",
        "displaced_patch",
        2,
    )
    assert (
        d["model"]["domain"] == "shapes" and d["prompts"]["name"] == "shapes" and d["prompts"]["limit"] == 8
    )
    assert d["strategy"]["mode"] == "corrected_async_gn" and d["strategy"]["warmup_steps"] == 4
    assert d["device"] == "auto" and d["dtype"] == "auto" and d["logger"]["mode"] == "offline"
    assert d["height"] == d["width"] == 128


@pytest.mark.parametrize(
    "overrides, model, prompts",
    [
        ([], "shapes_sdxl", "shapes"),  # the shapes model brings its captions (its config overrides /prompts)
        (["model=sdxl"], "sdxl", "builtin"),  # any other model: the default prompt list
        (["model=tiny_sdxl"], "tiny_sdxl", "builtin"),
        (["model=sdxl", "prompts=shapes"], "sdxl", "shapes"),  # the command line wins over the model's choice
        (["prompts=builtin"], "shapes_sdxl", "builtin"),  # (which preflight refuses, tests/faults)
        (["+experiment=tiny_distrifusion_table1"], "tiny_sdxl", "builtin"),
        (["+experiment=distrifusion_table1"], "sdxl", "coco"),
        (
            ["+experiment=distrifusion_table1", "model=shapes_sdxl"],
            "shapes_sdxl",
            "coco",
        ),  # the experiment wins
    ],
)
def test_the_prompt_set_follows_the_model(cfg_of, overrides, model, prompts):
    d = cfg_of(*overrides)
    assert (d["model"]["name"], d["prompts"]["name"]) == (model, prompts)


@pytest.mark.parametrize("group,option", [(g, o) for g, opts in GROUPS.items() for o in opts])
def test_every_group_option_composes_and_validates(cfg_of, group, option):
    extra = ["world_size=1"] if (group, option) == ("strategy", "none") else []
    d = cfg_of(f"{group}={option}", *extra)
    validate(d)
    if group == "strategy":
        from distri.launch import locate

        assert callable(locate(d["strategy"]["_target_"]))


def test_coco_prompts_compose_with_a_file(cfg_of, tmp_path):
    f = tmp_path / "captions.txt"
    f.write_text("a dog\na cat\n")
    validate(cfg_of("prompts=coco", f"prompts.path={f}"))


def test_wrong_key_or_type_fails_at_composition(cfg_of):
    with pytest.raises(ConfigCompositionException):
        cfg_of("strategy.no_such_key=1")
    with pytest.raises(ConfigCompositionException):
        cfg_of("world_size=two")
    with pytest.raises(ConfigCompositionException):
        cfg_of("strategy=displaced_patch", "strategy.warmup_steps=many")


def test_unknown_group_option_lists_valid_ones(cfg_of):
    with pytest.raises(MissingConfigException, match="displaced_patch"):
        cfg_of("strategy=pipefusion")


BAD = [  # on tiny_sdxl (256 px); the list's overrides come after it
    (["world_size=3"], "world sizes that work at 256 px: [1, 2, 4, 8]"),
    (["height=100"], "multiple of the VAE factor 8"),
    (["height=264"], "use a multiple of 32"),
    (["sampler.num_inference_steps=0"], "num_inference_steps must be >= 1"),
    (["sampler.num_inference_steps=3"], "warmup_steps=4 is longer than the sampling (3 steps)"),
    (["sampler.name=heun"], "unknown sampler 'heun'; valid: ddim, euler, dpmpp"),
    (["strategy.mode=fast"], "unknown strategy.mode 'fast'"),
    (["strategy=none"], "strategy=none runs the whole UNet on one rank"),
    (["strategy=naive_patch", "strategy.split_scheme=diag"], "unknown strategy.split_scheme 'diag'"),
    (["strategy.cfg_split=true", "world_size=3"], "cfg_split needs an even world_size"),
    (["strategy.cfg_split=true", "sampler.guidance_scale=1.0"], "cfg_split needs classifier-free guidance"),
    (["device=tpu"], "unknown device 'tpu'; valid: auto, cpu, cuda"),
    (["dtype=int8"], "unknown dtype 'int8'"),
    (["device=cpu", "dtype=float16"], "dtype=float16 on the CPU is refused"),
    (["device=cpu", "dtype=float16"], "Use dtype=auto (float32 on the CPU), float32 or bfloat16"),
    (["runner.timed_runs=0"], "runner.timed_runs must be >= 1"),
    (["prompts=coco", "prompts.path=/nonexistent/captions.json"], "COCO captions file"),
    (["logger.mode=cloud"], "unknown logger.mode 'cloud'"),
    (["strategy=tensor", "strategy.free_full=true"], "also set metrics.compare_to_original=false"),
    (
        ["model=tiny_sd15", "world_size=4", "height=128", "width=128"],
        "world sizes that work at 128 px: [1, 2]",
    ),
    # a parameter the strategy does not have is refused with its valid keys (not a TypeError in the workers)
    (
        ["strategy=naive_patch", "+strategy.mode=full_sync"],
        "strategy naive_patch has no parameter mode; its parameters: cfg_split, split_scheme",
    ),
    # tensor parallelism's limits are checked before any worker starts (tiny_sdxl: at most 8 ranks)
    (
        ["strategy=tensor", "world_size=16"],
        "tensor degrees (par_size) that work: [1, 2, 3, 4, 5, 6, 7, 8]",
    ),
]


@pytest.mark.parametrize("overrides,message", BAD, ids=[" ".join(o) for o, _ in BAD])
def test_bad_input_message(cfg_of, overrides, message):
    with pytest.raises(ConfigError) as ei:
        validate(cfg_of("model=tiny_sdxl", *overrides))
    assert message in str(ei.value)


def test_strategy_defaults_come_from_its_dataclass(cfg_of):
    """One source of defaults: the composed YAML, the dataclass and ``apply`` agree."""
    from distri.parallel.naive_patch import NaivePatch
    from distri.parallel.strategy import strategy_from_config

    d = cfg_of("strategy=naive_patch")
    assert d["strategy"]["split_scheme"] == NaivePatch().split_scheme == "alternate"
    assert strategy_from_config(d["strategy"]) == NaivePatch()


def test_all_problems_reported_together(cfg_of):
    with pytest.raises(ConfigError) as ei:
        validate(cfg_of("device=tpu", "sampler.name=heun"))
    assert len(ei.value.problems) == 2


@pytest.mark.parametrize("dtype", ["auto", "float32", "bfloat16", "float64"])
def test_cpu_dtypes_that_are_fine(cfg_of, dtype):
    validate(cfg_of("device=cpu", f"dtype={dtype}"))


@pytest.mark.parametrize(
    "gpus, world_size, refused",
    [(0, 2, "torch sees no CUDA GPU"), (1, 2, "need one CUDA GPU each but 1 is visible"), (2, 2, None)],
)
def test_float16_with_device_auto_is_refused_where_it_would_run_on_the_cpu(
    cfg_of, monkeypatch, gpus, world_size, refused
):
    """device=auto + float16: validation counts the GPUs (as the launcher will) and refuses the CPU fallback."""
    monkeypatch.setattr("torch.cuda.device_count", lambda: gpus)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    d = cfg_of("device=auto", "dtype=float16", f"world_size={world_size}")
    if refused is None:
        validate(d)
        return
    with pytest.raises(ConfigError) as ei:
        validate(d)
    (problem,) = ei.value.problems
    assert "dtype=float16 on the CPU is refused" in problem and refused in problem


@pytest.mark.parametrize(
    "dtype, device, expected",
    [("auto", "cuda", "float16"), ("auto", "cpu", "float32"), ("bfloat16", "cpu", "bfloat16"),
     ("float16", "cuda", "float16"), ("float32", "cuda", "float32")],
)  # fmt: skip
def test_resolve_dtype(dtype, device, expected):
    assert resolve_dtype(dtype, device) == expected


def test_resolve_dtype_refuses_float16_on_cpu():
    with pytest.raises(ConfigError, match="dtype=float16 on the CPU is refused"):
        resolve_dtype("float16", "cpu")


@pytest.mark.parametrize(
    "overrides",
    [["height=100"], ["height=200"], ["height=100", "world_size=4", "strategy=naive_patch"], ["width=90"]],
)
def test_suggested_sizes_fit_the_whole_config(cfg_of, overrides):
    """The sizes a message suggests validate with the rest of the config (world size, strategy) unchanged."""
    import re

    key = next(o for o in overrides if o.startswith(("height", "width"))).split("=")[0]
    with pytest.raises(ConfigError) as e:
        validate(cfg_of(*overrides))
    suggested = re.search(r"\(e\.g\. ([\d or]+):", str(e.value)).group(1).split(" or ")
    assert suggested
    for size in suggested:
        validate(cfg_of(*[o for o in overrides if not o.startswith(key)], f"{key}={size}"))
