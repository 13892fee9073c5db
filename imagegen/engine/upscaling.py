"""Run the upscalers of ``imagegen.upscalers``: latents interpolated, images resized, and
super-resolution networks from the model store, loaded once and applied in tiles so memory
stays bounded whatever the image's size."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from contextvars import copy_context
from functools import partial
from typing import Any

import bentoml
import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F

from imagegen.engine.compute import Lane
from imagegen.engine.loading import LoadedModel
from imagegen.engine.progress import Tracker
from imagegen.hop import UpscaleItem
from imagegen.inputs import unpack
from imagegen.upscalers import (
    LATENT_UPSCALERS,
    PIXEL_UPSCALERS,
    UpscalerInfo,
    builtin_upscalers,
    covering,
)
from models.loading import choose_device
from models.upscalers import load_upscaler

logger = logging.getLogger(__name__)

TILE = 256  # input pixels per tile side: a 4x network's tile output is 1024x1024
OVERLAP = 16  # input pixels each tile reads beyond its own, so seams match
MAX_PASSES = 3  # a network runs at most this often on one image (A1111's bound too)


class UpscaleCancelled(Exception):
    """Everyone waiting for the image has gone: stopped between tiles."""


class Upscalers:
    """The stored upscaling networks, loaded once on ``device``, and the built-in upscalers."""

    def __init__(self, stored: Sequence[bentoml.Model], device: str) -> None:
        device = str(choose_device(device))
        # Upscales alone run one at a time in a lane of their own (imagegen.engine.compute).
        self._lane = Lane("upscaler")
        self.networks = {}
        self.infos = builtin_upscalers()
        for model in stored:
            network = load_upscaler(model)
            half = device.startswith("cuda") and network.supports_half
            network.to(torch.device(device), dtype=torch.float16 if half else torch.float32)
            network.eval()
            self._lane.submit(partial(warm_up, network, device)).result()
            self.networks[model.tag.name] = network
            self.infos.append(
                UpscalerInfo(
                    name=model.tag.name,
                    kind="model",
                    scale=network.scale,
                    architecture=network.architecture.name,
                    version=model.tag.version,
                )
            )
            logger.info(
                "upscaler %s (%s, x%d) on %s",
                model.tag,
                network.architecture.name,
                network.scale,
                device,
            )

    def names(self, model: LoadedModel) -> list[str]:
        """What ``model``'s hires fix may name: latent upscalers where its latents allow."""
        latent = model.family.latent_upscale and not model.dedicated_inpainting
        return [i.name for i in self.infos if i.kind != "latent" or latent]

    def submit(self, item: UpscaleItem, tracker: Tracker) -> Future[PIL.Image.Image]:
        """An upscale alone (`/upscale`), queued for this object's own thread: it stops
        between tiles once ``item`` is cancelled, answering its input unchanged."""

        def run() -> PIL.Image.Image:
            image = unpack(item.image)
            size = (item.width, item.height)
            try:
                if not item.crop:
                    return self.image(image, size, item.upscaler, cancelled)
                covered = self.image(image, covering(image.size, size), item.upscaler, cancelled)
                return cropped(covered, size)
            except UpscaleCancelled:
                # A cancel comes only once its caller has gone: nobody reads this answer,
                # and a raise would be logged as the generator's error.
                return image

        def cancelled() -> bool:
            return tracker.is_cancelled(item.id)

        return self._lane.submit(partial(copy_context().run, run))

    def latents(self, latents: torch.Tensor, size: tuple[int, int], name: str) -> torch.Tensor:
        """Latents (B, C, h, w) interpolated to ``size`` (h, w) latent cells."""
        mode, antialias = LATENT_UPSCALERS[name]
        return F.interpolate(latents, size=size, mode=mode, antialias=antialias)

    def image(
        self,
        image: PIL.Image.Image,
        size: tuple[int, int],
        name: str,
        cancelled: Callable[[], bool] = lambda: False,
    ) -> PIL.Image.Image:
        """``image`` at ``size`` (width, height): resized, or through the network ``name``
        until it is at least that large, then resized to it."""
        if name in PIXEL_UPSCALERS:
            return image.resize(size, getattr(PIL.Image.Resampling, PIXEL_UPSCALERS[name]))
        network = self.networks[name]
        for _ in range(MAX_PASSES):
            if image.width >= size[0] and image.height >= size[1]:
                break
            image = self._network(network, image, cancelled)
        return image if image.size == size else image.resize(size, PIL.Image.Resampling.LANCZOS)

    def _network(
        self, network: object, image: PIL.Image.Image, cancelled: Callable[[], bool]
    ) -> PIL.Image.Image:
        pixels = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255)
        tensor = pixels.permute(2, 0, 1).unsqueeze(0)
        with torch.inference_mode():
            out = tiled(network, tensor, cancelled)
        array = (out[0].permute(1, 2, 0).clamp(0, 1) * 255).round().to(torch.uint8).numpy()
        return PIL.Image.fromarray(array, "RGB")


def warm_up(network: Any, device: str) -> None:
    """Lazy initialisation paid at start-up, not by a client."""
    with torch.inference_mode():
        network(torch.zeros((1, 3, 16, 16), device=device, dtype=network.dtype))


def tiled(network: object, tensor: torch.Tensor, cancelled: Callable[[], bool]) -> torch.Tensor:
    """``network`` over ``tensor`` (1, 3, H, W) on the CPU, tile by tile on its device: each
    tile reads ``OVERLAP`` pixels around it and keeps its own part of the output."""
    scale: int = network.scale  # type: ignore[attr-defined]
    parameter = next(network.model.parameters())  # type: ignore[attr-defined]
    _, _, height, width = tensor.shape
    out = torch.zeros((1, 3, height * scale, width * scale))
    for top in range(0, height, TILE):
        for left in range(0, width, TILE):
            if cancelled():
                raise UpscaleCancelled()
            bottom, right = min(top + TILE, height), min(left + TILE, width)
            y0, x0 = max(top - OVERLAP, 0), max(left - OVERLAP, 0)
            y1, x1 = min(bottom + OVERLAP, height), min(right + OVERLAP, width)
            piece = tensor[:, :, y0:y1, x0:x1].to(parameter.device, parameter.dtype)
            made = network(piece).float().cpu()  # type: ignore[operator]
            oy, ox = (top - y0) * scale, (left - x0) * scale
            out[:, :, top * scale : bottom * scale, left * scale : right * scale] = made[
                :, :, oy : oy + (bottom - top) * scale, ox : ox + (right - left) * scale
            ]
    return out


def cropped(image: PIL.Image.Image, size: tuple[int, int]) -> PIL.Image.Image:
    """The centre of ``image`` at ``size``."""
    left, top = (image.width - size[0]) // 2, (image.height - size[1]) // 2
    return image.crop((left, top, left + size[0], top + size[1]))
