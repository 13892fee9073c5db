"""The upscalers, by the names AUTOMATIC1111 gives them: what hires fix and `/upscale` may
name. Plain data (no torch); ``imagegen.engine.upscaling`` runs them.

- **latent**: the first pass's latents interpolated to the larger size, before the second
  pass (so the first pass is never decoded); hires fix only, on families whose latents are
  an image's grid (not FLUX.1's packed ones);
- **pixel**: the decoded image resized (`None` is A1111's no-model choice: a Lanczos resize);
- **model**: a super-resolution network from the model store, run as many times as the size
  needs, then resized to the exact size with Lanczos, as A1111 does.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

UpscalerKind = Literal["latent", "pixel", "model"]
# A1111's name -> (torch's interpolation mode, antialias).
LATENT_UPSCALERS: dict[str, tuple[str, bool]] = {
    "Latent": ("bilinear", False),
    "Latent (antialiased)": ("bilinear", True),
    "Latent (bicubic)": ("bicubic", False),
    "Latent (bicubic antialiased)": ("bicubic", True),
    "Latent (nearest)": ("nearest", False),
    "Latent (nearest-exact)": ("nearest-exact", False),
}
# A1111's name -> Pillow's resampling filter.
PIXEL_UPSCALERS: dict[str, str] = {"None": "LANCZOS", "Lanczos": "LANCZOS", "Nearest": "NEAREST"}
# Work per megapixel of output, in the unit of imagegen.work, beyond the image's own decode:
# a network's passes. Real-ESRGAN x4plus's architecture measured 0.55 at SD 1.5's scale
# (`python -m bench.upscalers --model sd15-random`, docs/benchmarks.md); rounded up to 1.
MODEL_UPSCALE_WORK = 1.0
MAX_UPSCALE = 8  # most times a side may grow
MAX_OUTPUT_SIDE = 4096


class UpscalerInfo(BaseModel):
    """An upscaler `hires.upscaler` and `/upscale` may name."""

    name: str = Field(description="As requests name it (AUTOMATIC1111's names for the built-in).")
    kind: UpscalerKind = Field(
        description="`latent` (hires fix only: the latents are enlarged before the second "
        "pass), `pixel` (a resize) or `model` (a super-resolution network from the store)."
    )
    scale: int | None = Field(None, description="A network's own factor; it runs again as needed.")
    architecture: str | None = Field(None, description="A network's, as spandrel detects it.")
    version: str | None = Field(None, description="A network's version in the model store.")


def builtin_upscalers() -> list[UpscalerInfo]:
    return [UpscalerInfo(name=name, kind="pixel") for name in PIXEL_UPSCALERS] + [
        UpscalerInfo(name=name, kind="latent") for name in LATENT_UPSCALERS
    ]


def kind_of(name: str) -> UpscalerKind:
    if name in LATENT_UPSCALERS:
        return "latent"
    return "pixel" if name in PIXEL_UPSCALERS else "model"


def upscale_work(name: str, width: int, height: int) -> float:
    """What upscaling to ``width`` x ``height`` with ``name`` costs beyond decoding."""
    return MODEL_UPSCALE_WORK * width * height / 1e6 if kind_of(name) == "model" else 0.0


def covering(size: tuple[int, int], box: tuple[int, int]) -> tuple[int, int]:
    """``size`` scaled to cover ``box``, keeping its shape."""
    scale = max(box[0] / size[0], box[1] / size[1])
    return max(round(size[0] * scale), box[0]), max(round(size[1] * scale), box[1])
