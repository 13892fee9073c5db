"""Pipelines built from code: each a recipe of component configs and a seed, so the same code
gives the same weights on every machine, under a version derived from the recipe. No ML
library is imported here: the service's public process resolves a recipe's tag without torch;
``models.build`` builds the pipeline.

- ``sd-shapes`` (the embedded default): a small Stable Diffusion trained in this repository
  (``python -m models train-shapes``) to draw a coloured shape on a coloured background; its
  weights are committed under ``models/weights/`` and versioned by their hash.
- ``sd-tiny``: Stable Diffusion 1.x's architecture at a fraction of its width, random weights.
  Its images are noise-like, but every code path (tokenizer, text encoder, UNet, VAE,
  scheduler, ``from_pretrained``) is the one a real model takes, and 64x64 in 4 steps costs
  a few milliseconds: the plumbing tests' model.
- ``sd-tiny-inpainting``: sd-tiny with a dedicated inpainting UNet (9 input channels), for
  the tests of that path.
- ``sd15-random``: Stable Diffusion 1.5's architecture with random weights, the GPU
  benchmark's model (no download). Its images are noise; its cost per step is SD 1.5's.
- ``sdxl-tiny``, ``sd3-tiny``, ``flux-tiny``: the SDXL, SD3 and FLUX.1 families at sd-tiny's
  scale, random weights, for the tests of each family's path.
- ``sdxl-random``: SDXL base's architecture with random weights, for GPU benchmarks at 1024².
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, replace
from functools import cache
from importlib.metadata import version
from pathlib import Path
from typing import Any

from .shapes import WORDS as SHAPE_WORDS

MAX_TOKENS = 77  # CLIP's context length
# A dedicated inpainting UNet reads the noisy latents (4 channels), the mask (1) and the
# masked image's latents (4).
INPAINTING_CHANNELS = 9
# Stable Diffusion 1.x's own noise schedule.
SD_SCHEDULER: dict[str, Any] = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "steps_offset": 1,
}
PNDM = ("PNDMScheduler", {**SD_SCHEDULER, "skip_prk_steps": True})
DDIM = (
    "DDIMScheduler",
    # Trailing spacing starts sampling at the last training timestep, from (almost) pure
    # noise, as training saw it (Lin et al. 2024, "Common Diffusion Noise Schedules and Sample
    # Steps are Flawed").
    {
        **SD_SCHEDULER,
        "clip_sample": False,
        "set_alpha_to_one": False,
        "timestep_spacing": "trailing",
    },
)
WEIGHTS = Path(__file__).parent / "weights"
# Stable Diffusion's VAE shape: four blocks, a scale factor of 8.
VAE_BLOCKS: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 4,
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
}


@dataclass(frozen=True)
class Recipe:
    name: str
    text_encoder: dict[str, Any]  # CLIP's text tower (each CLIP encoder of the family)
    denoiser: dict[str, Any]  # its UNet's or transformer's config
    vae: dict[str, Any]
    default_steps: int  # what the service applies to a blank `num_inference_steps`
    default_guidance_scale: float
    scheduler: tuple[str, dict[str, Any]] = PNDM  # (diffusers class, its config)
    words: tuple[str, ...] = ()  # whole-word tokens beyond the byte-level ones
    seed: int = 0
    trained: bool = False  # weights from models/weights/NAME.safetensors, else from `seed`
    family: str = "sd"  # a key of models.families.FAMILIES
    t5: dict[str, Any] | None = None  # SD3's and FLUX.1's T5 encoder
    text_encoder_2: dict[str, Any] | None = None  # SDXL's second CLIP, when it differs
    # Image side, where the denoiser's config does not give it (FLUX.1's pipeline assumes 1024).
    native_size: int | None = None

    def architecture(self) -> dict[str, Any]:
        # A Stable Diffusion 1.x recipe is described as before families existed, so its
        # version (and sd-shapes' training hash) stays what it was.
        described: dict[str, Any] = {
            "text_encoder": self.text_encoder,
            "unet" if self.family in ("sd", "sdxl") else "transformer": self.denoiser,
            "vae": self.vae,
            "scheduler": self.scheduler,
            "words": self.words,
        }
        if self.family != "sd":
            described.update(family=self.family, t5=self.t5, text_encoder_2=self.text_encoder_2)
        return described

    @property
    def weights(self) -> Path:
        return WEIGHTS / f"{self.name}.safetensors"

    def version(self) -> str:
        return weights_version(
            self.weights if self.trained else None, {**self.architecture(), "seed": self.seed}
        )

    @property
    def tag(self) -> str:
        return f"{self.name}:{self.version()}"


def weights_version(weights: Path | None, recipe: dict[str, Any]) -> str:
    """Changes exactly when the weights change: trained ones with their ``weights`` file,
    random ones with the ``recipe`` or the libraries that draw them."""
    if weights is not None:
        return f"v1-{file_digest(weights)[:12]}"
    libraries = {"diffusers": version("diffusers"), "torch": version("torch").split("+")[0]}
    return f"v1-{digest({**recipe, **libraries})[:12]}"


def digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


@cache
def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


SD_TINY_TEXT_WIDTH = 32
SD_TINY = Recipe(
    name="sd-tiny",
    text_encoder={
        "hidden_size": SD_TINY_TEXT_WIDTH,
        "intermediate_size": 64,
        "num_attention_heads": 4,
        "num_hidden_layers": 2,
        "projection_dim": 32,
        "max_position_embeddings": MAX_TOKENS,
    },
    denoiser={
        "sample_size": 8,  # latent side; the VAE scales it by 8 to a 64x64 image
        "in_channels": 4,
        "out_channels": 4,
        "block_out_channels": (32, 64),
        "layers_per_block": 1,
        "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
        "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
        "cross_attention_dim": SD_TINY_TEXT_WIDTH,
        "attention_head_dim": 8,
        "norm_num_groups": 8,
    },
    vae={
        **VAE_BLOCKS,
        "block_out_channels": (8, 16, 16, 16),
        "layers_per_block": 1,
        "norm_num_groups": 8,
        "sample_size": 64,
    },
    default_steps=4,
    default_guidance_scale=7.5,
)
# sd-tiny as a dedicated inpainting model: its UNet also reads the mask and the masked image
# (9 input channels), so it serves through diffusers' inpainting pipeline.
SD_TINY_INPAINTING = replace(
    SD_TINY,
    name="sd-tiny-inpainting",
    denoiser={**SD_TINY.denoiser, "in_channels": INPAINTING_CHANNELS},
)
SD15_RANDOM = Recipe(
    name="sd15-random",
    # CLIP ViT-L/14's text tower, as SD 1.5 uses it (the byte-level tokenizer's smaller
    # vocabulary changes the embedding table only, not the cost per token).
    text_encoder={
        "hidden_size": 768,
        "intermediate_size": 3072,
        "num_attention_heads": 12,
        "num_hidden_layers": 12,
        "projection_dim": 768,
        "max_position_embeddings": MAX_TOKENS,
        "hidden_act": "quick_gelu",
    },
    denoiser={
        "sample_size": 64,  # 512x512 images
        "in_channels": 4,
        "out_channels": 4,
        "block_out_channels": (320, 640, 1280, 1280),
        "layers_per_block": 2,
        "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        "cross_attention_dim": 768,
        "attention_head_dim": 8,
    },
    vae={
        **VAE_BLOCKS,
        "block_out_channels": (128, 256, 512, 512),
        "layers_per_block": 2,
        "sample_size": 512,
    },
    default_steps=50,
    default_guidance_scale=7.5,
)
SHAPES_TEXT_WIDTH = 128
SD_SHAPES = Recipe(
    name="sd-shapes",
    text_encoder={
        "hidden_size": SHAPES_TEXT_WIDTH,
        "intermediate_size": 512,
        "num_attention_heads": 4,
        "num_hidden_layers": 2,
        "projection_dim": SHAPES_TEXT_WIDTH,
        "max_position_embeddings": MAX_TOKENS,
    },
    denoiser={
        "sample_size": 16,  # latent side; the VAE scales it by 4 to a 64x64 image
        "in_channels": 4,
        "out_channels": 4,
        "block_out_channels": (32, 64, 64),
        "layers_per_block": 1,
        "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        "cross_attention_dim": SHAPES_TEXT_WIDTH,
        "attention_head_dim": 8,
        "norm_num_groups": 8,
    },
    vae={
        # Three blocks, a scale factor of 4 (16x16 latents): SD's 8 would leave 8x8 latents,
        # coarse for a circle 26 pixels wide.
        **VAE_BLOCKS,
        "down_block_types": ("DownEncoderBlock2D",) * 3,
        "up_block_types": ("UpDecoderBlock2D",) * 3,
        "block_out_channels": (16, 32, 64),
        "layers_per_block": 1,
        "norm_num_groups": 8,
        "mid_block_add_attention": False,
        "sample_size": 64,
    },
    scheduler=DDIM,
    words=SHAPE_WORDS,
    default_steps=20,
    # The best measured: every colour and shape right at 2, a few shapes warp from 3 on
    # (docs/models.md, "The demo model"; bench.demo_model).
    default_guidance_scale=2.0,
    trained=True,
)
# The other families at sd-tiny's scale, 64x64 images (an 8x VAE, sd-tiny's): each runs its
# family's real code path (two CLIP encoders and size conditioning; CLIP+CLIP+T5 into an MMDiT
# with flow matching; CLIP+T5 into FLUX's transformer over packed latents) in milliseconds.
# Transformer families' VAEs skip the quantisation convolutions and shift their latents.
FLOW_VAE = {**SD_TINY.vae, "use_quant_conv": False, "use_post_quant_conv": False}
TINY_T5 = {"d_model": 64, "d_kv": 16, "d_ff": 128, "num_layers": 2, "num_heads": 4}
SDXL_TIME_EMBED = 8
SDXL_TINY = Recipe(
    name="sdxl-tiny",
    family="sdxl",
    text_encoder=SD_TINY.text_encoder,
    denoiser={
        **SD_TINY.denoiser,
        # Both CLIP encoders' hidden states side by side.
        "cross_attention_dim": 2 * SD_TINY_TEXT_WIDTH,
        "use_linear_projection": True,
        "transformer_layers_per_block": (1, 2),
        # Size conditioning: six numbers (original size, crop, target size) embedded, next to
        # the second encoder's pooled projection.
        "addition_embed_type": "text_time",
        "addition_time_embed_dim": SDXL_TIME_EMBED,
        "projection_class_embeddings_input_dim": 6 * SDXL_TIME_EMBED
        + SD_TINY.text_encoder["projection_dim"],
    },
    vae=SD_TINY.vae,
    # SDXL base's own scheduler.
    scheduler=(
        "EulerDiscreteScheduler",
        {**SD_SCHEDULER, "timestep_spacing": "leading", "interpolation_type": "linear"},
    ),
    default_steps=4,
    default_guidance_scale=5.0,
)
# SDXL base's architecture with random weights, the GPU benchmark's SDXL-size model: CLIP
# ViT-L and OpenCLIP ViT-bigG text towers, the 2.6B-parameter UNet, SDXL's VAE. 1024x1024.
SDXL_RANDOM = Recipe(
    name="sdxl-random",
    family="sdxl",
    text_encoder=SD15_RANDOM.text_encoder,
    text_encoder_2={
        "hidden_size": 1280,
        "intermediate_size": 5120,
        "num_attention_heads": 20,
        "num_hidden_layers": 32,
        "projection_dim": 1280,
        "max_position_embeddings": MAX_TOKENS,
        "hidden_act": "gelu",
    },
    denoiser={
        "sample_size": 128,
        "in_channels": 4,
        "out_channels": 4,
        "block_out_channels": (320, 640, 1280),
        "layers_per_block": 2,
        "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        "transformer_layers_per_block": (1, 2, 10),
        "attention_head_dim": (5, 10, 20),
        "cross_attention_dim": 768 + 1280,
        "use_linear_projection": True,
        "addition_embed_type": "text_time",
        "addition_time_embed_dim": 256,
        "projection_class_embeddings_input_dim": 6 * 256 + 1280,
    },
    vae={**SD15_RANDOM.vae, "sample_size": 1024, "scaling_factor": 0.13025},
    scheduler=SDXL_TINY.scheduler,
    default_steps=50,
    default_guidance_scale=5.0,
)
SD3_TINY = Recipe(
    name="sd3-tiny",
    family="sd3",
    text_encoder=SD_TINY.text_encoder,
    denoiser={
        "sample_size": 8,
        "patch_size": 2,
        # SD3's 16 latent channels: its inpainting pipeline checks for them.
        "in_channels": 16,
        "out_channels": 16,
        "num_layers": 2,
        "attention_head_dim": 16,
        "num_attention_heads": 2,
        "caption_projection_dim": 32,
        "joint_attention_dim": TINY_T5["d_model"],  # CLIP's states are padded to T5's width
        "pooled_projection_dim": 2 * SD_TINY.text_encoder["projection_dim"],
        "pos_embed_max_size": 32,
    },
    vae={**FLOW_VAE, "latent_channels": 16, "scaling_factor": 1.5305, "shift_factor": 0.0609},
    t5=TINY_T5,
    scheduler=("FlowMatchEulerDiscreteScheduler", {"shift": 3.0}),  # SD3-medium's
    default_steps=4,
    default_guidance_scale=7.0,
)
FLUX_TINY = Recipe(
    name="flux-tiny",
    family="flux",
    text_encoder=SD_TINY.text_encoder,
    denoiser={
        # 2x2 latent patches packed into one token of 4 x 4 channels.
        "patch_size": 1,
        "in_channels": 16,
        "num_layers": 1,
        "num_single_layers": 1,
        "attention_head_dim": 16,
        "num_attention_heads": 2,
        "joint_attention_dim": TINY_T5["d_model"],
        "pooled_projection_dim": SD_TINY_TEXT_WIDTH,  # CLIP's pooled output
        "axes_dims_rope": (4, 4, 8),
        # Like FLUX.1-schnell: guidance distilled away, so the model ignores a scale.
        "guidance_embeds": False,
    },
    vae={**FLOW_VAE, "scaling_factor": 0.3611, "shift_factor": 0.1159},
    t5=TINY_T5,
    scheduler=("FlowMatchEulerDiscreteScheduler", {"shift": 1.0}),  # FLUX.1-schnell's
    default_steps=4,
    default_guidance_scale=0.0,
    native_size=64,
)
EMBEDDED = SD_SHAPES  # what a fresh machine serves
RECIPES = {
    recipe.name: recipe
    for recipe in (
        SD_SHAPES,
        SD_TINY,
        SD_TINY_INPAINTING,
        SD15_RANDOM,
        SDXL_TINY,
        SDXL_RANDOM,
        SD3_TINY,
        FLUX_TINY,
    )
}


@dataclass(frozen=True)
class AdapterRecipe:
    """A LoRA built from code for the tests: random low-rank updates of a recipe's attention
    projections, strong enough to change its images visibly."""

    name: str
    base: str  # a recipe's name
    rank: int = 4
    alpha: int = 16  # the update is scaled by alpha / rank
    seed: int = 7

    @property
    def tag(self) -> str:
        """Versioned like a recipe: changes with the adapter's recipe or its base's weights."""
        return f"{self.name}:v1-{digest({**asdict(self), 'base': RECIPES[self.base].tag})[:12]}"


SD_TINY_STYLE = AdapterRecipe(name="sd-tiny-style", base="sd-tiny")
SD_TINY_TINT = AdapterRecipe(name="sd-tiny-tint", base="sd-tiny", seed=8)
# At SD 1.5's scale, for the GPU benchmark of adapter switching (rank 16: a mid-sized LoRA).
SD15_RANDOM_STYLE = AdapterRecipe(name="sd15-random-style", base="sd15-random", rank=16)
SD15_RANDOM_TINT = AdapterRecipe(name="sd15-random-tint", base="sd15-random", rank=16, seed=8)
ADAPTER_RECIPES = {
    recipe.name: recipe
    for recipe in (SD_TINY_STYLE, SD_TINY_TINT, SD15_RANDOM_STYLE, SD15_RANDOM_TINT)
}
