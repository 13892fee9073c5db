"""Encode generated images into the response body."""

from __future__ import annotations

import io

from PIL.Image import Image
from PIL.PngImagePlugin import PngInfo
from starlette.responses import Response

from .generation import Generation
from .schemas import GenerationParameters, OutputFormat

MEDIA_TYPES: dict[str, str] = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}


def encode_image(
    image: Image, parameters: GenerationParameters, output_format: OutputFormat, quality: int
) -> bytes:
    """PNG carries the generation parameters as JSON in a `parameters` text chunk, so an image
    can be regenerated from the file alone; JPEG and WebP are encoded at ``quality``."""
    buffer = io.BytesIO()
    if output_format == "png":
        text = PngInfo()
        text.add_text("parameters", parameters.model_dump_json())
        image.save(buffer, format="PNG", pnginfo=text)
    else:
        image.save(buffer, format=output_format.upper(), quality=quality)
    return buffer.getvalue()


def image_response(
    generation: Generation,
    parameters: GenerationParameters,
    output_format: OutputFormat,
    quality: int,
) -> Response:
    timing = (
        f"queue;dur={generation.queue_seconds * 1000:.1f}, "
        f"inference;dur={generation.inference_seconds * 1000:.1f}"
    )
    return Response(
        encode_image(generation.image, parameters, output_format, quality),
        media_type=MEDIA_TYPES[output_format],
        headers={
            "X-Seed": str(parameters.seed),
            "X-Model": parameters.model,
            "Server-Timing": timing,
        },
    )
