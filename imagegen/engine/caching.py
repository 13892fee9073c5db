"""Step caching, a request's opt-in (``cache``): between denoising steps, reuse what changed
little, for speed at the price of slightly different images. diffusers' cache hooks, the one
each family takes:

- FLUX's transformer has diffusers' cache mixin and takes **First Block Cache**: a step whose
  first block's residual moved less than a threshold from the last step's reuses the rest of
  the network's residual;
- the UNets and SD3's transformer take **Pyramid Attention Broadcast**: self-attention is
  computed every other step and cross-attention one step in four, reused in between, in the
  middle of the schedule (timesteps 100 to 800, where attention changes least); diffusers
  asks the step's timestep of a callback, which a hook on the denoiser's input answers.

Hooks are added for one call and removed after it, on the model's pipeline thread (calls to
one model are serialised there), so an uncached call runs the model exactly as loaded."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from diffusers.hooks import (
    FirstBlockCacheConfig,
    HookRegistry,
    PyramidAttentionBroadcastConfig,
    apply_pyramid_attention_broadcast,
)
from diffusers.hooks.pyramid_attention_broadcast import _PYRAMID_ATTENTION_BROADCAST_HOOK
from diffusers.models.attention_processor import Attention
from diffusers.models.cache_utils import CacheMixin

FIRST_BLOCK_CACHE = "first-block-cache"
PYRAMID_ATTENTION_BROADCAST = "pyramid-attention-broadcast"
# diffusers' suggested threshold for FLUX is 0.08 to 0.12; the lower end keeps more detail.
FIRST_BLOCK_THRESHOLD = 0.08
SELF_ATTENTION_EVERY, CROSS_ATTENTION_EVERY = 2, 4
TIMESTEPS = (100, 800)


def denoiser(pipeline: Any) -> torch.nn.Module:
    """The network the steps run: a UNet or a transformer."""
    unet = getattr(pipeline, "unet", None)
    return unet if unet is not None else pipeline.transformer


def cache_method(pipeline: Any) -> str | None:
    """The step cache this pipeline's denoiser takes, or None: none when it is compiled
    (`IMAGEGEN_COMPILE`), since hooks added per call would make torch.compile recompile."""
    network = denoiser(pipeline)
    if hasattr(network, "_orig_mod"):  # torch.compile's wrapper
        return None
    if isinstance(network, CacheMixin):
        return FIRST_BLOCK_CACHE
    if any(isinstance(module, Attention) for module in network.modules()):
        return PYRAMID_ATTENTION_BROADCAST
    return None


@contextmanager
def step_cache(pipeline: Any, method: str | None) -> Iterator[None]:
    """Within: ``pipeline``'s calls cache steps by ``method`` (its :func:`cache_method`,
    found once at load), or not at all when None."""
    if method is None:
        yield
        return
    network: Any = denoiser(pipeline)
    if method == FIRST_BLOCK_CACHE:
        network.enable_cache(FirstBlockCacheConfig(threshold=FIRST_BLOCK_THRESHOLD))
        try:
            yield
        finally:
            network.disable_cache()
    else:
        with _timestep_noted(network) as timestep:
            config = PyramidAttentionBroadcastConfig(
                spatial_attention_block_skip_range=SELF_ATTENTION_EVERY,
                cross_attention_block_skip_range=CROSS_ATTENTION_EVERY,
                spatial_attention_timestep_skip_range=TIMESTEPS,
                cross_attention_timestep_skip_range=TIMESTEPS,
                current_timestep_callback=lambda: timestep[0],
            )
            apply_pyramid_attention_broadcast(network, config)
            try:
                yield
            finally:
                registry = HookRegistry.check_if_exists_or_initialize(network)
                registry.remove_hook(_PYRAMID_ATTENTION_BROADCAST_HOOK, recurse=True)


@contextmanager
def _timestep_noted(network: torch.nn.Module) -> Iterator[list[float]]:
    """The timestep of the denoiser's latest step, as its input says (the UNets take it
    second, the transformers by name)."""
    timestep = [0.0]

    def note(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        value = kwargs["timestep"] if "timestep" in kwargs else args[1]
        timestep[0] = float(torch.as_tensor(value).flatten()[0])

    handle = network.register_forward_pre_hook(note, with_kwargs=True)
    try:
        yield timestep
    finally:
        handle.remove()
