"""Load a stored pipeline once onto the best device and describe what it serves."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import bentoml
import torch
from diffusers import AutoPipelineForText2Image, DiffusionPipeline

from imagegen.schedulers import compatible_schedulers, name_of
from imagegen.schemas import ModelInfo

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
        return f"{self.info.name}:{self.info.version}"


def load_model(stored: bentoml.Model, *, device: str = "auto", dtype: str = "auto") -> LoadedModel:
    """``from_pretrained`` from the model store onto ``device``: the one load of the process."""
    torch_device = choose_device(device)
    torch_dtype = choose_dtype(dtype, torch_device)
    started = time.perf_counter()
    pipeline = AutoPipelineForText2Image.from_pretrained(stored.path, dtype=torch_dtype)
    pipeline.to(torch_device)
    pipeline.set_progress_bar_config(disable=True)
    logger.info(
        "loaded pipeline %s on %s (%s) in %.2fs",
        stored.tag,
        torch_device,
        torch_dtype,
        time.perf_counter() - started,
    )
    metadata = stored.info.metadata
    info = ModelInfo(
        name=stored.tag.name,
        version=str(stored.tag.version),
        pipeline=type(pipeline).__name__,
        device=str(torch_device),
        dtype=str(torch_dtype).removeprefix("torch."),
        native_width=metadata["native_width"],
        native_height=metadata["native_height"],
        default_steps=metadata["default_steps"],
        default_guidance_scale=metadata["default_guidance_scale"],
        default_scheduler=name_of(pipeline.scheduler),
        schedulers=compatible_schedulers(pipeline.scheduler),
    )
    return LoadedModel(info=info, pipeline=pipeline)
