"""Load a stored pipeline once onto the best device, with the performance switches asked for.

Knows nothing of requests: ``imagegen.engine.loading`` turns a loaded pipeline into what the service
serves.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import (
    AutoPipelineForImage2Image,
    AutoPipelineForInpainting,
    AutoPipelineForText2Image,
    DiffusionPipeline,
)

from .families import Family, family_of
from .recipes import INPAINTING_CHANNELS


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
class Switches:
    """How a pipeline is laid out and run, never what it computes."""

    channels_last: str = "off"  # on, off, or auto: on with CUDA
    compile: str = "off"  # off, or a torch.compile mode
    attention_slicing: bool = False
    vae_slicing: bool = False
    vae_tiling: bool = False
    cpu_offload: bool = False


@dataclass(frozen=True)
class LoadedPipeline:
    pipeline: DiffusionPipeline
    family: Family
    device: torch.device  # the one it runs on (under CPU offload its weights wait on the CPU)
    dtype: torch.dtype
    switches: list[str]  # the switches in effect
    # Built from ``pipeline``'s components: the weights are in memory once. A dedicated
    # inpainting model has no image-to-image pipeline (its UNet needs a mask).
    image_to_image: DiffusionPipeline | None
    inpainting: DiffusionPipeline


def apply_switches(pipeline: Any, switches: Switches, device: torch.device) -> list[str]:
    """The performance switches turned on, applied; returns their names."""
    applied = []
    if switches.channels_last == "on" or (
        switches.channels_last == "auto" and device.type == "cuda"
    ):
        # Convolutions in NHWC, which cuDNN may run faster in half precision (measured slower
        # on an H200 with SD 1.5: docs/benchmarks.md, GPU).
        for module in (getattr(pipeline, "unet", None), pipeline.vae):
            if module is not None:  # a transformer denoiser has no convolutions to lay out
                module.to(memory_format=torch.channels_last)
        applied.append("channels_last")
    if switches.attention_slicing:
        pipeline.enable_attention_slicing()
        applied.append("attention_slicing")
    if switches.vae_slicing:
        pipeline.vae.enable_slicing()
        applied.append("vae_slicing")
    if switches.vae_tiling:
        pipeline.vae.enable_tiling()
        applied.append("vae_tiling")
    if switches.compile != "off":
        # Compiled lazily on the first call per shape: the warm-up sizes pay for it at start-up.
        name = family_of(type(pipeline).__name__).denoiser
        setattr(pipeline, name, torch.compile(getattr(pipeline, name), mode=switches.compile))
        applied.append(f"compile:{switches.compile}")
    return applied


def load_pipeline(
    path: str | Path, *, device: str = "auto", dtype: str = "auto", switches: Switches | None = None
) -> LoadedPipeline:
    """``from_pretrained`` onto the chosen device and dtype, with ``switches`` applied."""
    switches = switches or Switches()
    torch_device = choose_device(device)
    torch_dtype = choose_dtype(dtype, torch_device)
    if switches.cpu_offload and torch_device.type != "cuda":
        raise ValueError(
            f"IMAGEGEN_CPU_OFFLOAD needs a CUDA device, but the device is {torch_device}"
        )
    pipeline = AutoPipelineForText2Image.from_pretrained(path, dtype=torch_dtype)
    if switches.cpu_offload:
        pipeline.enable_model_cpu_offload(device=torch_device)
    else:
        pipeline.to(torch_device)
    applied = apply_switches(pipeline, switches, torch_device)
    if switches.cpu_offload:
        applied.append("cpu_offload")
    # from_pipe casts to its `dtype` argument, float32 when none: passed, or a float16
    # model's shared weights would be doubled in place.
    inpainting = AutoPipelineForInpainting.from_pipe(pipeline, dtype=torch_dtype)
    family = family_of(type(pipeline).__name__)
    denoiser = getattr(pipeline, family.denoiser)
    image_to_image = (
        None
        if family.denoiser == "unet" and denoiser.config.in_channels == INPAINTING_CHANNELS
        else AutoPipelineForImage2Image.from_pipe(pipeline, dtype=torch_dtype)
    )
    for each in (pipeline, image_to_image, inpainting):
        if each is not None:
            each.set_progress_bar_config(disable=True)
    return LoadedPipeline(
        pipeline, family, torch_device, torch_dtype, applied, image_to_image, inpainting
    )
