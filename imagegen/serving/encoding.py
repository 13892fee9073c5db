"""Encode generated images into the response body."""

from __future__ import annotations

import base64
import io

from PIL.Image import Image
from PIL.PngImagePlugin import PngInfo
from starlette.responses import JSONResponse, Response

from imagegen.schemas import (
    EncodedImage,
    GenerationParameters,
    ImagesResponse,
    OutputFormat,
    Timings,
)
from imagegen.serving.remote import Generated

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


def _headers(parameters: GenerationParameters, timings: Timings, batch_size: int) -> dict[str, str]:
    server_timing = f"queue;dur={timings.queue_ms:.1f}, inference;dur={timings.inference_ms:.1f}"
    return {
        "X-Seed": str(parameters.seed),
        "X-Model": parameters.model,
        "X-Batch-Size": str(batch_size),
        "Server-Timing": server_timing,
    }


def image_response(generated: Generated, output_format: OutputFormat, quality: int) -> Response:
    (generation,) = generated.generations
    parameters = generation.parameters
    return Response(
        encode_image(generation.image, parameters, output_format, quality),
        media_type=MEDIA_TYPES[output_format],
        headers=_headers(parameters, generated.timings, generated.batch_size),
    )


def images_response(
    generated: Generated, output_format: OutputFormat, quality: int
) -> JSONResponse:
    """Each image encoded as `/generate/image` would (its PNG chunk names its own seed); the
    resolved parameters are image 0's."""
    images = [
        EncodedImage(
            data=base64.b64encode(
                encode_image(g.image, g.parameters, output_format, quality)
            ).decode(),
            seed=g.parameters.seed,
            format=output_format,
        )
        for g in generated.generations
    ]
    parameters, timings = generated.generations[0].parameters, generated.timings
    body = ImagesResponse(images=images, parameters=parameters, timings=timings)
    headers = _headers(parameters, timings, generated.batch_size)
    return JSONResponse(body.model_dump(mode="json"), headers=headers)
