"""ControlNets in the generator: the stored ones loaded once each, and for each served model
the pipelines that take them, made from its own pipelines with diffusers' ``from_pipe`` (every
weight shared: the model's components and the ControlNets are in memory once).

A call sets its ControlNets on its own shallow copy of the control pipeline (one, or diffusers'
Multi-ControlNet container of several), as it sets its scheduler: nothing per request is
written onto the shared pipelines.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import bentoml
import diffusers
import PIL.Image

from imagegen.engine.loading import LoadedModel
from imagegen.inputs import unpack
from imagegen.schemas import ControlNetInfo, ControlParameters, Mode, WorkItem
from models.controlnets import controlnet_config, fits, load_controlnet
from models.loading import choose_device, choose_dtype

logger = logging.getLogger(__name__)

# Each family's ControlNet pipeline per mode (SD3's diffusers has for text-to-image only: its
# inpainting one takes a ControlNet trained for inpainting alone).
PIPELINES: dict[str, dict[Mode, str]] = {
    "sd": {
        "text-to-image": "StableDiffusionControlNetPipeline",
        "image-to-image": "StableDiffusionControlNetImg2ImgPipeline",
        "inpainting": "StableDiffusionControlNetInpaintPipeline",
    },
    "sdxl": {
        "text-to-image": "StableDiffusionXLControlNetPipeline",
        "image-to-image": "StableDiffusionXLControlNetImg2ImgPipeline",
        "inpainting": "StableDiffusionXLControlNetInpaintPipeline",
    },
    "sd3": {"text-to-image": "StableDiffusion3ControlNetPipeline"},
    "flux": {
        "text-to-image": "FluxControlNetPipeline",
        "image-to-image": "FluxControlNetImg2ImgPipeline",
        "inpainting": "FluxControlNetInpaintPipeline",
    },
}
MULTI = {
    "sd": "MultiControlNetModel",
    "sdxl": "MultiControlNetModel",
    "sd3": "SD3MultiControlNetModel",
    "flux": "FluxMultiControlNetModel",
}


@dataclass(frozen=True)
class ControlNet:
    info: ControlNetInfo
    network: Any


class ControlNets:
    """The stored ControlNets; each is loaded on the configured device and dtype once, when
    the first model it fits asks for it (one that fits no served model is never loaded)."""

    def __init__(self, stored: Sequence[bentoml.Model], device: str, dtype: str) -> None:
        self.device = choose_device(device)
        self.dtype = choose_dtype(dtype, self.device)
        # Each one's family and config, read once: what fitting a model is judged on.
        self.stored = [
            (model, str(model.info.metadata["family"]), controlnet_config(model))
            for model in stored
        ]
        self._loaded: dict[str, ControlNet] = {}

    def for_model(self, model: LoadedModel) -> ModelControls:
        """The ControlNets that fit ``model``, and its pipelines that take them (without any
        stored, the model's pipeline is not looked at)."""
        fitting = [
            self._load(stored, family)
            for stored, family, config in self.stored
            if fits(
                config,
                family,
                model.family.name,
                getattr(model.pipeline, model.family.denoiser).config,
            )
        ]
        return ModelControls(model, fitting)

    @property
    def loaded(self) -> list[str]:
        """The tags of the ControlNets loaded so far."""
        return list(self._loaded)

    def _load(self, stored: bentoml.Model, family: str) -> ControlNet:
        tag = str(stored.tag)
        if tag not in self._loaded:
            network = load_controlnet(stored.path, family, torch_dtype=self.dtype)
            network.to(self.device).eval()
            info = ControlNetInfo(name=stored.tag.name, version=str(stored.tag.version))
            self._loaded[tag] = ControlNet(info, network)
            logger.info("ControlNet %s (%s) on %s", tag, family, self.device)
        return self._loaded[tag]


class ModelControls:
    """One model's ControlNet pipelines, by mode, made once (empty without a fitting net)."""

    def __init__(self, model: LoadedModel, fitting: list[ControlNet]) -> None:
        self.family = model.family.name
        self.networks = {net.info.tag: net.network for net in fitting}
        self.infos = [net.info for net in fitting]
        self.pipelines: dict[Mode, Any] = {}
        self._image_argument: dict[Mode, str] = {}
        if not fitting:
            return
        classes = PIPELINES[self.family]
        dtype = model.pipeline.dtype
        for mode, base in model.pipelines.items():
            # A dedicated inpainting model runs every mode through its inpainting pipeline.
            wanted = "inpainting" if model.dedicated_inpainting else mode
            if wanted in classes:
                cls = getattr(diffusers, classes[wanted])
                made = cls.from_pipe(base, controlnet=fitting[0].network, dtype=dtype)
                made.set_progress_bar_config(disable=True)
                self.pipelines[mode] = made
                # SD's and SDXL's text-to-image pipelines name their control images `image`.
                takes = inspect.signature(made.__call__).parameters
                self._image_argument[mode] = (
                    "control_image" if "control_image" in takes else "image"
                )

    @property
    def modes(self) -> list[Mode]:
        return list(self.pipelines)

    def network(self, controls: list[ControlParameters]) -> Any:
        """What a call's pipeline takes as `controlnet`: one, or several in a container."""
        nets = [self.networks[control.name] for control in controls]
        if len(nets) == 1:
            return nets[0]
        return getattr(diffusers, MULTI[self.family])(nets)

    def arguments(
        self,
        mode: Mode,
        items: list[WorkItem],
        controls: list[ControlParameters],
        size: tuple[int, int],
    ) -> dict[str, Any]:
        """A call's control arguments: each control's map at ``size``, its scale and span.
        The call's images share their maps (the batch key holds their digests)."""
        maps = [resized(unpack(control), size) for control in items[0].controls]
        single = len(controls) == 1

        def each(values: list[float]) -> float | list[float]:
            return values[0] if single else values

        return {
            self._image_argument[mode]: maps[0] if single else maps,
            "controlnet_conditioning_scale": each([c.scale for c in controls]),
            "control_guidance_start": each([c.start for c in controls]),
            "control_guidance_end": each([c.end for c in controls]),
        }


def resized(image: PIL.Image.Image, size: tuple[int, int]) -> PIL.Image.Image:
    """A control map at hires fix's larger size (its own size otherwise)."""
    return image if image.size == size else image.resize(size, PIL.Image.Resampling.LANCZOS)
