"""Diffusion pipelines in the BentoML model store: saved once with their defaults, found by tag."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import bentoml
from bentoml._internal.bento.bento import BentoModelInfo
from bentoml.exceptions import NotFound
from bentoml.models import BentoModel

from .families import family_of
from .recipes import RECIPES, Recipe

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline

logger = logging.getLogger(__name__)


class UnknownModel(LookupError):
    """The configured model is not in the store; the message lists the ones that are."""


def native_size(pipeline: DiffusionPipeline) -> tuple[int, int]:
    """(width, height) the pipeline was trained at: the denoiser's sample size in pixels, or
    the pipeline's own default where the denoiser does not say (FLUX.1)."""
    family = family_of(type(pipeline).__name__)
    size = getattr(getattr(pipeline, family.denoiser).config, "sample_size", None)
    size = size or pipeline.default_sample_size
    height, width = (size, size) if isinstance(size, int) else size
    return width * pipeline.vae_scale_factor, height * pipeline.vae_scale_factor


def pipeline_metadata(
    pipeline: DiffusionPipeline,
    *,
    steps: int | None = None,
    guidance_scale: float | None = None,
    size: int | None = None,
) -> dict[str, Any]:
    """What the service needs to know about a pipeline before loading it, stored with the model.

    Steps and guidance default to the pipeline's own call defaults; distilled models such as
    SD-Turbo need others (1 step, guidance 0), given at import time.
    """
    call_defaults = inspect.signature(pipeline.__call__).parameters
    width, height = (size, size) if size else native_size(pipeline)
    return {
        "pipeline": type(pipeline).__name__,
        "family": family_of(type(pipeline).__name__).name,
        "native_width": width,
        "native_height": height,
        "default_steps": steps or call_defaults["num_inference_steps"].default,
        "default_guidance_scale": (
            call_defaults["guidance_scale"].default if guidance_scale is None else guidance_scale
        ),
    }


def save_pipeline(
    pipeline: DiffusionPipeline,
    tag: str,
    *,
    source: str,
    steps: int | None = None,
    guidance_scale: float | None = None,
    size: int | None = None,
) -> bentoml.Model:
    """Write ``pipeline`` into the model store as ``tag`` (a new version when it has none)."""
    metadata = pipeline_metadata(pipeline, steps=steps, guidance_scale=guidance_scale, size=size)
    with bentoml.models.create(tag, labels={"source": source}, metadata=metadata) as model:
        pipeline.save_pretrained(model.path)
    logger.info("saved %s to the model store as %s", source, model.tag)
    return model


def ensure_built(recipe: Recipe) -> bentoml.Model:
    """The recipe's current version, built from code and stored the first time it is needed."""
    try:
        return bentoml.models.get(recipe.tag)
    except NotFound:
        from .build import build_pipeline  # torch only where a pipeline is built

        logger.info("building %s from its recipe", recipe.tag)
        return save_pipeline(
            build_pipeline(recipe),
            recipe.tag,
            source=f"recipe {recipe.name}",
            steps=recipe.default_steps,
            guidance_scale=recipe.default_guidance_scale,
            size=recipe.native_size,
        )


def newest_of_kind(
    kind: str, keep: Callable[[dict[str, Any]], bool] = lambda metadata: True
) -> list[bentoml.Model]:
    """The newest version of each stored model labelled ``kind`` (adapters, upscalers,
    ControlNets) whose metadata ``keep`` accepts, by name."""
    names = {
        model.tag.name
        for model in bentoml.models.list()
        if model.info.labels.get("kind") == kind and keep(model.info.metadata)
    }
    return [bentoml.models.get(name) for name in sorted(names)]


def stored_tags() -> list[str]:
    return sorted(str(model.tag) for model in bentoml.models.list())


def find_model(tag: str) -> bentoml.Model:
    """The stored model ``name[:version]``; a recipe's is built on first use."""
    if (recipe := RECIPES.get(tag.split(":")[0])) is not None:
        ensure_built(recipe)
    try:
        return bentoml.models.get(tag)
    except NotFound:
        stored = ", ".join(stored_tags()) or "none"
        raise UnknownModel(
            f"model {tag!r} is not in the BentoML model store (stored: {stored}); "
            "import it with `python -m models import SOURCE --name NAME`"
        ) from None


def served_families(tags: list[str]) -> set[str]:
    """The pipeline families of the models ``tags`` (a recipe's without building it; a
    model not in the store has none)."""
    families = set()
    for tag in tags:
        if (recipe := RECIPES.get(tag.split(":")[0])) is not None:
            families.add(recipe.family)
            continue
        try:
            families.add(family_of(str(bentoml.models.get(tag).info.metadata["pipeline"])).name)
        except NotFound:
            continue
    return families


class StoredPipeline(BentoModel):
    """The service's model declaration: a ``BentoModel`` (so ``bentoml build`` packs it) that
    stores a recipe's model (``sd-shapes``, ``sd-tiny``, ``sd15-random``) the first time
    anything resolves it, and names the stored models when the tag is unknown instead of
    trying to pull from BentoCloud."""

    def resolve(self, base_path: Any = None) -> bentoml.Model:
        find_model(str(self.tag))
        resolved: bentoml.Model = super().resolve(base_path)
        return resolved

    def to_info(self, alias: str | None = None) -> BentoModelInfo:
        find_model(str(self.tag))
        return super().to_info(alias)
