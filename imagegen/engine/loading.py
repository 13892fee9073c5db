"""The served model: a stored pipeline loaded with the service's settings, and what
``GET /models`` says of it."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import get_args

import bentoml
import torch
from diffusers import DiffusionPipeline

from imagegen.engine.adapters import Adapters
from imagegen.engine.caching import cache_method
from imagegen.engine.schedulers import compatible_schedulers, name_of
from imagegen.schemas import AdapterInfo, Guidance, Mode, ModelInfo
from imagegen.settings import Settings, get_settings
from imagegen.work import default_budget
from models.families import Family
from models.loading import LoadedPipeline, Switches, load_pipeline

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadedModel:
    """A pipeline in memory with the defaults it applies to blank request fields, and the
    pipeline that runs each mode (all sharing its weights)."""

    info: ModelInfo
    family: Family
    pipeline: DiffusionPipeline
    pipelines: dict[Mode, DiffusionPipeline]
    adapters: Adapters  # its LoRAs, on its pipeline's modules

    @property
    def dedicated_inpainting(self) -> bool:
        """An inpainting model runs every mode through its inpainting pipeline."""
        return self.pipelines["text-to-image"] is self.pipelines["inpainting"]

    @property
    def tag(self) -> str:
        return self.info.tag


def switches(settings: Settings) -> Switches:
    return Switches(**{field.name: getattr(settings, field.name) for field in fields(Switches)})


def load_model(
    stored: bentoml.Model,
    settings: Settings | None = None,
    adapters: Sequence[bentoml.Model] = (),
) -> LoadedModel:
    """The one load of the process: from the model store onto the configured device, with the
    configured dtype and performance switches. ``adapters``, its stored LoRAs, load when a
    request first names them."""
    settings = settings or get_settings()
    started = time.perf_counter()
    loaded = load_pipeline(
        stored.path, device=settings.device, dtype=settings.dtype, switches=switches(settings)
    )
    clip_layers_readable(loaded.pipeline)
    logger.info(
        "loaded pipeline %s on %s (%s) in %.2fs",
        stored.tag,
        loaded.device,
        loaded.dtype,
        time.perf_counter() - started,
    )
    for adapter in adapters:  # where each came from: the operator's business, not the API's
        logger.info(
            "LoRA %s of %s from %s", adapter.tag, stored.tag, adapter.info.metadata["source"]
        )
    return LoadedModel(
        info=describe(stored, loaded, settings, adapters),
        family=loaded.family,
        pipeline=loaded.pipeline,
        pipelines=mode_pipelines(loaded),
        adapters=Adapters(
            loaded.pipeline,
            {str(adapter.tag): adapter.path for adapter in adapters},
            settings.max_loras,
        ),
    )


def clip_layers_readable(pipeline: DiffusionPipeline) -> None:
    """SD's pipeline reads an earlier CLIP layer (`clip_skip`) through the text encoder's
    `text_model`, which transformers 5 folded into the encoder itself: the name points back
    to it, outside the module tree (so no weights are listed twice)."""
    encoder = getattr(pipeline, "text_encoder", None)
    folded = hasattr(encoder, "final_layer_norm") and not hasattr(encoder, "text_model")
    if folded:
        object.__setattr__(encoder, "text_model", encoder)


def mode_pipelines(loaded: LoadedPipeline) -> dict[Mode, DiffusionPipeline]:
    if loaded.image_to_image is None:
        return dict.fromkeys(get_args(Mode), loaded.inpainting)
    return {
        "text-to-image": loaded.pipeline,
        "image-to-image": loaded.image_to_image,
        "inpainting": loaded.inpainting,
    }


def guidance_of(loaded: LoadedPipeline) -> Guidance:
    if loaded.family.classifier_free_guidance:
        return "classifier-free"
    # FLUX.1-dev embeds the scale; -schnell was distilled without it.
    denoiser = getattr(loaded.pipeline, loaded.family.denoiser)
    return "distilled" if denoiser.config.get("guidance_embeds") else "none"


def weights_bytes(pipeline: DiffusionPipeline) -> int:
    return sum(
        parameter.numel() * parameter.element_size()
        for component in pipeline.components.values()
        if isinstance(component, torch.nn.Module)
        for parameter in component.parameters()
    )


def describe(
    stored: bentoml.Model,
    loaded: LoadedPipeline,
    settings: Settings,
    adapters: Sequence[bentoml.Model] = (),
) -> ModelInfo:
    """What ``GET /models`` says of a loaded pipeline; its defaults come from the store."""
    metadata = stored.info.metadata
    pipeline = loaded.pipeline
    served = loaded.inpainting if loaded.image_to_image is None else pipeline
    return ModelInfo(
        name=stored.tag.name,
        version=str(stored.tag.version),
        family=loaded.family.name,
        pipeline=type(served).__name__,
        device=str(loaded.device),
        dtype=str(loaded.dtype).removeprefix("torch."),
        native_width=metadata["native_width"],
        native_height=metadata["native_height"],
        default_steps=metadata["default_steps"],
        default_guidance_scale=metadata["default_guidance_scale"],
        default_scheduler=name_of(pipeline.scheduler),
        schedulers=compatible_schedulers(pipeline.scheduler),
        switches=loaded.switches,
        guidance=guidance_of(loaded),
        weights_bytes=weights_bytes(pipeline),
        step_cache=cache_method(pipeline),
        cache_default=bool(
            cache_method(pipeline) and {"*", stored.tag.name} & settings.cached_models
        ),
        loras=[
            AdapterInfo(
                name=adapter.tag.name,
                version=str(adapter.tag.version),
            )
            for adapter in adapters
        ],
        modes=list(get_args(Mode)),
        max_request_work=settings.max_request_work or default_budget(str(loaded.device)),
    )
