"""Load a stored pipeline once onto the best device and describe what it serves."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import bentoml
import torch
from diffusers import AutoPipelineForText2Image, DiffusionPipeline

from imagegen.schedulers import compatible_schedulers, name_of
from imagegen.schemas import ModelInfo
from imagegen.settings import Settings, get_settings

logger = logging.getLogger(__name__)


def choose_device(setting: str) -> torch.device:
    """``auto`` is CUDA when a GPU is visible, else CPU; anything else is taken as given."""
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(setting)


def choose_dtype(setting: str, device: torch.device) -> torch.dtype:
    """``auto`` is float16 on CUDA (half the memory, tensor cores) and float32 elsewhere, where
    half precision is slow or unsupported."""
    if setting == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    dtype: torch.dtype = getattr(torch, setting)
    return dtype


@dataclass(frozen=True)
class LoadedModel:
    """A pipeline in memory with the defaults it applies to blank request fields."""

    info: ModelInfo
    pipeline: DiffusionPipeline

    @property
    def tag(self) -> str:
        return self.info.tag


def apply_switches(pipeline: Any, settings: Settings, device: torch.device) -> list[str]:
    """The performance switches ``settings`` turns on, applied; returns their names."""
    applied = []
    if settings.channels_last == "on" or (
        settings.channels_last == "auto" and device.type == "cuda"
    ):
        # Convolutions in NHWC: faster with cuDNN in half precision.
        for module in (pipeline.unet, pipeline.vae):
            module.to(memory_format=torch.channels_last)
        applied.append("channels_last")
    if settings.attention_slicing:
        pipeline.enable_attention_slicing()
        applied.append("attention_slicing")
    if settings.vae_slicing:
        pipeline.vae.enable_slicing()
        applied.append("vae_slicing")
    if settings.vae_tiling:
        pipeline.vae.enable_tiling()
        applied.append("vae_tiling")
    if settings.compile != "off":
        # Compiled lazily on the first call per shape: the warm-up sizes pay for it at start-up.
        pipeline.unet = torch.compile(pipeline.unet, mode=settings.compile)
        applied.append(f"compile:{settings.compile}")
    return applied


def load_model(stored: bentoml.Model, settings: Settings | None = None) -> LoadedModel:
    """``from_pretrained`` from the model store onto the configured device, with the configured
    dtype and performance switches: the one load of the process."""
    settings = settings or get_settings()
    torch_device = choose_device(settings.device)
    torch_dtype = choose_dtype(settings.dtype, torch_device)
    if settings.cpu_offload and torch_device.type != "cuda":
        raise ValueError(
            f"IMAGEGEN_CPU_OFFLOAD needs a CUDA device, but the device is {torch_device}"
        )
    started = time.perf_counter()
    pipeline = AutoPipelineForText2Image.from_pretrained(stored.path, dtype=torch_dtype)
    if settings.cpu_offload:
        pipeline.enable_model_cpu_offload(device=torch_device)
    else:
        pipeline.to(torch_device)
    pipeline.set_progress_bar_config(disable=True)
    switches = apply_switches(pipeline, settings, torch_device)
    if settings.cpu_offload:
        switches.append("cpu_offload")
    logger.info(
        "loaded pipeline %s on %s (%s) in %.2fs",
        stored.tag,
        torch_device,
        torch_dtype,
        time.perf_counter() - started,
    )
    info = describe(stored, pipeline, torch_device, torch_dtype, switches)
    return LoadedModel(info=info, pipeline=pipeline)


def describe(
    stored: bentoml.Model,
    pipeline: Any,
    device: torch.device,
    dtype: torch.dtype,
    switches: list[str],
) -> ModelInfo:
    """What ``GET /models`` says of a loaded pipeline; its defaults come from the store. The
    device is the one it runs on (under CPU offload its weights wait on the CPU)."""
    metadata = stored.info.metadata
    return ModelInfo(
        name=stored.tag.name,
        version=str(stored.tag.version),
        pipeline=type(pipeline).__name__,
        device=str(device),
        dtype=str(dtype).removeprefix("torch."),
        native_width=metadata["native_width"],
        native_height=metadata["native_height"],
        default_steps=metadata["default_steps"],
        default_guidance_scale=metadata["default_guidance_scale"],
        default_scheduler=name_of(pipeline.scheduler),
        schedulers=compatible_schedulers(pipeline.scheduler),
        switches=switches,
    )
