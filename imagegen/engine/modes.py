"""What one pipeline call is given for its mode, and what its images become.

Text-to-image starts from noise; image-to-image from the input image's latents noised to
`strength`; inpainting (on a text-to-image model) does the same and, at every step, puts the
input's latents back outside the mask (diffusers' masked-latent approach), then its pixels
there too, as AUTOMATIC1111 does: black-masked pixels come back exactly as sent, not through
the VAE's lossy round trip. A dedicated inpainting model (9-channel UNet) runs every mode
through its inpainting pipeline: text-to-image as a fully masked grey image at strength 1,
image-to-image as a fully masked image.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any

import PIL.Image
import torch

from imagegen.engine.loading import LoadedModel
from imagegen.inputs import unpack
from imagegen.schemas import GenerationParameters, Mode, WorkItem
from imagegen.upscalers import LATENT_UPSCALERS

GREY = (127, 127, 127)
# What an image-to-image call starts from: images, or latents (hires fix's latent upscalers).
Start = list[PIL.Image.Image] | torch.Tensor
Pipelines = dict[Mode, Any]  # a pipeline per mode: a model's own, or its ControlNet ones


@dataclass(frozen=True)
class ModeCall:
    pipeline: Any
    arguments: dict[str, Any]  # beyond prompts, steps, guidance and generators
    images: list[PIL.Image.Image] = field(default_factory=list)
    masks: list[PIL.Image.Image] = field(default_factory=list)
    controlnet: Any = None  # set on the call's copy of a ControlNet pipeline

    def finish(self, made: list[PIL.Image.Image]) -> list[PIL.Image.Image]:
        """Inpainted images with their kept pixels restored."""
        if not self.masks:
            return made
        return [
            PIL.Image.composite(image, original, mask)
            for image, original, mask in zip(made, self.images, self.masks, strict=True)
        ]


def mode_call(
    model: LoadedModel, items: list[WorkItem], pipelines: Pipelines | None = None
) -> ModeCall:
    """The pipeline and arguments of one call; its items share a mode and strength. Its
    pipeline is ``pipelines``' for the mode (the model's own by default)."""
    group = [item.parameters for item in items]
    first = group[0]
    pipelines = pipelines or model.pipelines
    if first.mode == "text-to-image" and not model.dedicated_inpainting:
        return call_for(model, pipelines, group, [], [])
    blank = (first.width, first.height)
    images = [unpack(i.image) if i.image else PIL.Image.new("RGB", blank, GREY) for i in items]
    masks = [unpack(i.mask) if i.mask else PIL.Image.new("L", blank, 255) for i in items]
    return call_for(model, pipelines, group, images, masks)


def second_pass_call(
    model: LoadedModel,
    group: list[GenerationParameters],
    start: Start,
    pipelines: Pipelines | None = None,
) -> ModeCall:
    """Hires fix's second pass: image-to-image from the enlarged first pass (images, or
    latents straight into the pipeline, which takes 4-channel latents as they are)."""
    first = group[0]
    masks = [PIL.Image.new("L", (first.width, first.height), 255)] * len(group)
    return call_for(model, pipelines or model.pipelines, group, start, masks)


def call_for(
    model: LoadedModel,
    pipelines: Pipelines,
    group: list[GenerationParameters],
    images: Start,
    masks: list[PIL.Image.Image],
) -> ModeCall:
    """The pipeline and arguments for ``group``'s mode, from ``images`` and ``masks``."""
    first = group[0]
    pipeline = pipelines[first.mode]
    common: dict[str, Any] = {}
    if first.clip_skip > 1:  # diffusers counts the layers skipped: A1111's count less one
        common["clip_skip"] = first.clip_skip - 1
    if model.family.classifier_free_guidance:  # a distilled family has no negative prompt
        common["negative_prompt"] = [p.negative_prompt for p in group]
    size = {**common, "width": first.width, "height": first.height}
    if first.hires is not None and first.hires.upscaler in LATENT_UPSCALERS:
        size["output_type"] = "latent"  # enlarged as latents, never decoded
    if first.mode == "text-to-image" and not model.dedicated_inpainting:
        return ModeCall(pipeline, size)
    strength = first.strength or 1.0
    if first.mode == "image-to-image" and not model.dedicated_inpainting:
        # SD's and SDXL's take the image's size; FLUX.1's would take its own default.
        takes_size = "width" in inspect.signature(pipeline.__call__).parameters
        arguments = {**(size if takes_size else common), "image": images, "strength": strength}
        return ModeCall(pipeline, arguments)
    arguments = {**size, "image": images, "mask_image": masks, "strength": strength}
    if first.mode == "inpainting":
        assert isinstance(images, list)
        return ModeCall(pipeline, arguments, images, masks)
    return ModeCall(pipeline, arguments)
