"""ControlNets in the BentoML model store: imported once (a diffusers ``ControlNetModel``,
``SD3ControlNetModel`` or ``FluxControlNetModel``), versioned, packed by ``bentoml build``,
tied to a pipeline family, not to one model: the service gives each to every served model
of its family whose denoiser it fits.

A stored ControlNet is its diffusers directory (``save_pretrained``), with its family and
class in the metadata. It is checked at import by loading it, so a directory that holds no
ControlNet of that family is refused then, not at a client's request.

Recipes build ControlNets from code: ``sd-shapes-control``, trained in this repository
(``python -m models train-control``) on the synthetic world to draw ``sd-shapes``' shape
where a silhouette or outline says, and a tiny random one per family for the tests.
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import bentoml
from bentoml.exceptions import NotFound

from .families import family_of
from .recipes import RECIPES, WEIGHTS, weights_version
from .store import newest_of_kind

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

KIND = "controlnet"  # the `kind` label that tells ControlNets from pipelines in the store
# The diffusers class of each family's ControlNets (SD 1.x/2.x and SDXL share one; the
# config's `addition_embed_type` tells them apart).
CLASSES = {
    "sd": "ControlNetModel",
    "sdxl": "ControlNetModel",
    "sd3": "SD3ControlNetModel",
    "flux": "FluxControlNetModel",
}


# What a ControlNet's residuals must agree on with the denoiser they are added to (its
# diffusers config's keys). A UNet's input channels may differ (a dedicated inpainting UNet
# reads 9, its ControlNet 4); a transformer ControlNet may have fewer blocks than its
# transformer.
FIT = (
    "block_out_channels",
    "layers_per_block",
    "cross_attention_dim",
    "transformer_layers_per_block",
    "addition_time_embed_dim",
    "attention_head_dim",
    "num_attention_heads",
    "joint_attention_dim",
    "pooled_projection_dim",
    "patch_size",
)
DENOISERS = ("unet", "transformer")  # where a pipeline directory keeps its denoiser


class BadControlNet(ValueError):
    """A source that is not a ControlNet of the family it is imported for."""


def family_of_config(config: Any, cls: str) -> str | None:
    """The family a ControlNet's class and config say it belongs to."""
    if cls == "ControlNetModel":
        return "sdxl" if config.get("addition_embed_type") == "text_time" else "sd"
    return {"SD3ControlNetModel": "sd3", "FluxControlNetModel": "flux"}.get(cls)


def load_controlnet(source: str | Path, family: str, **kwargs: Any) -> Any:
    """The ControlNet at ``source`` (a hub id or a directory) as ``family``'s class."""
    import diffusers
    import torch

    if family not in CLASSES:
        raise BadControlNet(f"--base must be one of {', '.join(CLASSES)}, but is {family!r}")
    cls = getattr(diffusers, CLASSES[family])
    default_dtype = torch.get_default_dtype()
    try:
        network = cls.from_pretrained(str(source), **kwargs)
    except Exception as error:  # diffusers raises many kinds for what is no ControlNet
        raise BadControlNet(f"{source} is not a {CLASSES[family]}: {error}") from error
    finally:
        # A load that fails midway leaves torch's default dtype at `torch_dtype`, and every
        # module made after in this process would be made in it.
        torch.set_default_dtype(default_dtype)
    found = family_of_config(network.config, CLASSES[family])
    if found != family:
        raise BadControlNet(f"{source} is a ControlNet of the {found} family, not {family}")
    return network


def import_controlnet(
    source: str | Path, name: str, family: str, *, dtype: str = "float16", label: str | None = None
) -> bentoml.Model:
    """Store the ControlNet ``source`` as ``name`` (a new version when it has none) for the
    pipelines of ``family``; ``label`` says where it came from (default: ``source``)."""
    import torch

    network = load_controlnet(source, family, torch_dtype=getattr(torch, dtype))
    metadata = {"family": family, "class": CLASSES[family], "source": label or str(source)}
    with bentoml.models.create(name, labels={"kind": KIND}, metadata=metadata) as stored:
        network.save_pretrained(stored.path)
    logger.info("stored ControlNet %s (%s) as %s", source, family, stored.tag)
    return stored


def fits(config: dict[str, Any], family: str, model_family: str, denoiser: Any) -> bool:
    """Whether a ControlNet of ``family`` with ``config`` fits a ``model_family`` denoiser
    of config ``denoiser`` (a dict or diffusers' FrozenDict)."""
    if family != model_family:
        return False
    keys = FIT + (("in_channels",) if family in ("sd3", "flux") else ())
    return all(config.get(key) == denoiser.get(key) for key in keys if key in denoiser)


def controlnet_config(stored: bentoml.Model) -> dict[str, Any]:
    config: dict[str, Any] = json.loads((Path(stored.path) / "config.json").read_text())
    return config


def denoiser_config(pipeline: bentoml.Model) -> dict[str, Any] | None:
    """A stored pipeline's denoiser's config, from its directory (no weights read)."""
    for name in DENOISERS:
        path = Path(pipeline.path) / name / "config.json"
        if path.exists():
            config: dict[str, Any] = json.loads(path.read_text())
            return config
    return None


def fitting_controlnets(tags: list[str], families: set[str]) -> list[bentoml.Model]:
    """The stored ControlNets of ``families`` that fit one of the models ``tags``; a model
    not stored yet (a recipe built on first use) admits every one of its family."""
    pipelines = []
    for tag in tags:
        try:
            pipelines.append(bentoml.models.get(tag))
        except NotFound:
            return stored_controlnets(families)
    denoisers = [
        (family_of(str(p.info.metadata["pipeline"])).name, denoiser_config(p)) for p in pipelines
    ]
    return [
        net
        for net in stored_controlnets(families)
        if any(
            denoiser is not None
            and fits(controlnet_config(net), str(net.info.metadata["family"]), family, denoiser)
            for family, denoiser in denoisers
        )
    ]


def stored_controlnets(families: set[str]) -> list[bentoml.Model]:
    """The newest version of each stored ControlNet of ``families``."""
    return newest_of_kind(KIND, lambda metadata: metadata.get("family") in families)


@dataclass(frozen=True)
class ControlRecipe:
    """A ControlNet built from code for a recipe's pipeline: the copy of its denoiser's
    encoder that diffusers makes (``from_unet``, ``from_transformer``), with weights drawn
    from ``seed``, or, trained, read from ``models/weights/NAME.safetensors``."""

    name: str
    base: str  # a recipe of models.recipes
    seed: int = 0
    trained: bool = False
    # A UNet ControlNet's conditioning embedding: one entry per stage, each after the first
    # halving the control image, so that it lands on the latents' grid (sd-shapes': 4x).
    conditioning_channels: tuple[int, ...] = (16, 32, 96, 256)
    layers: int = 1  # a transformer ControlNet's blocks (FLUX.1: of each kind)

    @property
    def family(self) -> str:
        return RECIPES[self.base].family

    @property
    def weights(self) -> Path:
        return WEIGHTS / f"{self.name}.safetensors"

    def version(self) -> str:
        recipe = {**asdict(self), "base": RECIPES[self.base].version()}
        return weights_version(self.weights if self.trained else None, recipe)

    @property
    def tag(self) -> str:
        return f"{self.name}:{self.version()}"

    def untrained(self, denoiser: Any) -> Any:
        """The ControlNet of ``denoiser``, as diffusers copies it (its zero layers zero)."""
        import diffusers

        cls = getattr(diffusers, CLASSES[self.family])
        if self.family in ("sd", "sdxl"):
            channels = self.conditioning_channels
            return cls.from_unet(denoiser, conditioning_embedding_out_channels=channels)
        if self.family == "sd3":  # no extra channels: those are for inpainting ControlNets
            return cls.from_transformer(
                denoiser, num_layers=self.layers, num_extra_conditioning_channels=0
            )
        config = denoiser.config
        return cls.from_transformer(
            denoiser,
            num_layers=self.layers,
            num_single_layers=self.layers,
            attention_head_dim=config.attention_head_dim,
            num_attention_heads=config.num_attention_heads,
        )

    def build(self) -> Any:
        import torch
        from safetensors.torch import load_file

        from .build import build_pipeline

        pipeline = build_pipeline(RECIPES[self.base])
        denoiser = pipeline.unet if self.family in ("sd", "sdxl") else pipeline.transformer
        network = self.untrained(denoiser)
        if self.trained:
            network.load_state_dict({k: v.float() for k, v in load_file(self.weights).items()})
        else:
            stir(network, torch.Generator().manual_seed(self.seed))
        return network


def stir(network: torch.nn.Module, generator: torch.Generator) -> None:
    """Draw the layers a fresh ControlNet starts at zero (its zero convolutions and
    projections), so that an untrained one changes the image: the tests see it wired in."""
    import torch

    with torch.no_grad():
        for parameter in network.parameters():
            if parameter.ndim > 1 and not parameter.any():
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.2)


# sd-shapes' ControlNet: its conditioning embedding halves twice, 64 pixels to 16 latents.
SD_SHAPES_CONTROL = ControlRecipe(
    "sd-shapes-control", "sd-shapes", trained=True, conditioning_channels=(16, 32, 32)
)
CONTROL_RECIPES = {
    recipe.name: recipe
    for recipe in (
        SD_SHAPES_CONTROL,
        ControlRecipe("sd-tiny-control", "sd-tiny", conditioning_channels=(8, 16, 16, 16)),
        ControlRecipe("sdxl-tiny-control", "sdxl-tiny", conditioning_channels=(8, 16, 16, 16)),
        ControlRecipe("sd3-tiny-control", "sd3-tiny"),
        ControlRecipe("flux-tiny-control", "flux-tiny"),
        # SD 1.5's ControlNet architecture, random weights: what one costs (bench.work).
        ControlRecipe("sd15-random-control", "sd15-random"),
    )
}


def ensure_controlnet(recipe: ControlRecipe) -> bentoml.Model:
    """The recipe's ControlNet, built and stored the first time it is needed."""
    try:
        return bentoml.models.get(recipe.tag)
    except NotFound:
        with tempfile.TemporaryDirectory() as built:
            recipe.build().save_pretrained(built)
            return import_controlnet(
                built, recipe.tag, recipe.family, dtype="float32", label=f"recipe {recipe.name}"
            )
