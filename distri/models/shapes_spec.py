"""The shapes_sdxl pipeline's architecture: its config dicts and the untrained pipeline built from them.

:mod:`distri.models.train_shapes` trains it; the trained folder in ``distri/models/weights/shapes_sdxl`` is what
the ``bundled`` model source loads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from distri.data.shapes import VOCABULARY
from distri.models.tiny import components_from_spec, text_config, tiny_spec
from distri.models.tokenizer import MERGE_WORDS

SEEDS = {"unet": 10, "vae": 11, "text_encoder": 12, "text_encoder_2": 13}
WORDS = tuple(dict.fromkeys((*VOCABULARY, *MERGE_WORDS)))
"""Words the shapes tokenizer merges into single tokens: the captions' vocabulary first."""


ATTENTION_LEVELS = {
    "sdxl": (["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
             ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"]),
    "all": (["CrossAttnDownBlock2D"] * 3, ["CrossAttnUpBlock2D"] * 3),
}  # fmt: skip
"""UNet block types per ``--attention-levels``: SDXL's (no attention at the full latent resolution) or
cross-attention at every level (words bound to the 16x16 latent grid of a 128 px image, not only to 8x8)."""


def shapes_spec(
    size: int, channels: tuple[int, ...] = (32, 64, 96), text_width: int = 32, attention: str = "sdxl"
) -> dict[str, Any]:
    """Config dicts of the shapes_sdxl pipeline at image side ``size`` (latent ``size // 8``): tiny_sdxl's
    (:func:`distri.models.tiny.tiny_spec`: tokenizers, SDXL conditioning) with a UNet of 3 levels of
    ``channels``, 4 heads and one layer per block, the blocks of :data:`ATTENTION_LEVELS` ``[attention]``, two
    CLIP text encoders of width ``text_width`` (3 layers; cross-attention dim ``2 * text_width``, the pooled
    projection ``text_width`` wide), and a VAE of channels 16/32/64/64 without attention in its middle block
    (fully convolutional: trained on crops, used on whole images). The defaults are the shipped model's."""
    spec = tiny_spec("tiny_sdxl")
    down, up = ATTENTION_LEVELS[attention]
    spec["text_encoder"] = text_config(text_width, 3, 4, "quick_gelu", text_width)
    spec["text_encoder_2"] = text_config(text_width, 3, 4, "gelu", text_width)
    spec["unet"].update(
        sample_size=size // 8,
        down_block_types=down,
        up_block_types=up,
        block_out_channels=list(channels),
        layers_per_block=1,
        attention_head_dim=[4, 4, 4],  # diffusers' historical naming: the number of heads
        transformer_layers_per_block=[1, 1, 1],
        cross_attention_dim=2 * text_width,  # both encoders' penultimate states, concatenated
        projection_class_embeddings_input_dim=6 * spec["unet"]["addition_time_embed_dim"] + text_width,
    )
    spec["vae"].update(
        block_out_channels=[16, 32, 64, 64],
        norm_num_groups=8,
        mid_block_add_attention=False,
        sample_size=size,
    )
    spec["scheduler"]["_class_name"] = "DDIMScheduler"
    return spec


def build_pipeline(size: int, workdir: Path, **arch: Any):
    """The untrained pipeline at ``size``; ``arch``: :func:`shapes_spec`'s architecture keywords."""
    from diffusers import StableDiffusionXLPipeline

    components = components_from_spec(shapes_spec(size, **arch), workdir, SEEDS, WORDS)
    return StableDiffusionXLPipeline(**components, add_watermarker=False)
