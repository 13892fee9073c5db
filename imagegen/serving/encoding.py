"""Encode generated images once, into what a response sends or a job stores.

Encoding is CPU work that grows with the pixels (PNG's deflate, base64, the JSON around it):
every caller runs all but the smallest through :func:`off_the_loop`, since on the public
process's event loop it would hold every other request meanwhile (issue 25 measured `/livez`
held 2.3 s by eight large PNGs)."""

from __future__ import annotations

import base64
import io
import time
import zlib
from collections.abc import Callable
from typing import TypeVar

import anyio.to_thread
from PIL.Image import Image
from PIL.PngImagePlugin import PngInfo
from pydantic import BaseModel, ConfigDict
from starlette.responses import JSONResponse, Response
from starlette.types import Scope

from imagegen.schemas import (
    EncodedImage,
    GenerationParameters,
    ImagesResponse,
    OutputFormat,
    Timings,
    UpscaleParameters,
    UpscaleRequest,
)
from imagegen.serving.remote import Generated, Upscaled
from middleware.timing import record

MEDIA_TYPES: dict[str, str] = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
# PNG's deflate with zlib's run-length strategy, "designed to be almost as fast as
# Z_HUFFMAN_ONLY, but give better compression for PNG image data" (zlib's manual): on generated
# images 1.5-6x faster than Pillow's default strategy for the same bytes (0.99-1.0x; python -m
# bench.encoding).
PNG_STRATEGY = zlib.Z_RLE

T = TypeVar("T")


# Answers with this many pixels or fewer are encoded on the event loop: at most 0.5 ms of PNG
# on cpu-2 (random noise, PNG's worst case; 64x64 0.25 ms), less than the hop to a worker
# thread and back (python -m bench.serving's encode stage when this was chosen: 0.9 ms in a
# thread, 0.6 on the loop; 0.5 on the loop since the run-length deflate).
INLINE_PIXELS = 128 * 64


async def off_the_loop(work: Callable[[], T]) -> T:
    """``work()`` in a worker thread (anyio's bounded pool), the event loop free meanwhile."""
    return await anyio.to_thread.run_sync(work)


async def build_answer(scope: Scope, generated: Generated | None, work: Callable[[], T]) -> T:
    """The answer ``work()`` builds (encodes) from ``generated``, timed as ``encode`` in the
    request's ``Server-Timing``: off the loop, unless its images are small enough that the
    thread hop would cost more than the encode (:data:`INLINE_PIXELS`)."""
    started = time.perf_counter()
    pixels = sum(g.image.width * g.image.height for g in generated.generations) if generated else 0
    answer = work() if pixels <= INLINE_PIXELS else await off_the_loop(work)
    record(scope, "encode", time.perf_counter() - started)
    return answer


def encode_image(
    image: Image, parameters: BaseModel, output_format: OutputFormat, quality: int
) -> bytes:
    """PNG carries the parameters (a generation's, both passes of a hires fix; an upscale's)
    as JSON in a `parameters` text chunk, so an image can be made again from the file alone;
    JPEG and WebP are encoded at ``quality``."""
    buffer = io.BytesIO()
    if output_format == "png":
        text = PngInfo()
        text.add_text("parameters", parameters.model_dump_json())
        image.save(buffer, format="PNG", pnginfo=text, compress_type=PNG_STRATEGY)
    else:
        image.save(buffer, format=output_format.upper(), quality=quality)
    return buffer.getvalue()


class Encoded(BaseModel):
    """A request's images encoded once: what `/generate/image(s)` answer, and what a job
    stores, one value per image so that one can be read alone."""

    model_config = ConfigDict(ser_json_bytes="base64", val_json_bytes="base64")

    images: list[bytes]
    seeds: list[int]
    format: OutputFormat
    parameters: GenerationParameters  # image 0's
    timings: Timings
    batch_size: int  # the largest pipeline call the images were part of

    @property
    def media_type(self) -> str:
        return MEDIA_TYPES[self.format]

    def only(self, k: int) -> Encoded:
        """Image ``k`` alone."""
        return self.model_copy(update={"images": [self.images[k]], "seeds": [self.seeds[k]]})


def encode(generated: Generated, output_format: OutputFormat, quality: int) -> Encoded:
    """Each image encoded as `/generate/image` would (its PNG chunk names its own seed)."""
    generations = generated.generations
    return Encoded(
        images=[encode_image(g.image, g.parameters, output_format, quality) for g in generations],
        seeds=[g.parameters.seed for g in generations],
        format=output_format,
        parameters=generations[0].parameters,
        timings=generated.timings,
        batch_size=generated.batch_size,
    )


def _headers(encoded: Encoded) -> dict[str, str]:
    timings = encoded.timings
    server_timing = ", ".join(
        f"{name.removesuffix('_ms')};dur={value:.1f}"
        for name, value in timings.model_dump().items()
    )
    return {
        "X-Seed": str(encoded.seeds[0]),
        "X-Model": encoded.parameters.model,
        "X-Batch-Size": str(encoded.batch_size),
        "Server-Timing": server_timing,
    }


def encode_upscaled(upscaled: Upscaled, request: UpscaleRequest) -> bytes:
    """An upscaled image, a PNG's chunk saying what made it."""
    made = UpscaleParameters(
        width=upscaled.image.width, height=upscaled.image.height, upscaler=request.upscaler
    )
    return encode_image(upscaled.image, made, request.output_format, request.quality)


def upscaled_response(upscaled: Upscaled, request: UpscaleRequest) -> Response:
    """`/upscale`'s answer: the image's bytes, the upscaler in its headers."""
    data = encode_upscaled(upscaled, request)
    headers = {
        "X-Upscaler": request.upscaler,
        "Server-Timing": f"upscale;dur={upscaled.seconds * 1000:.1f}",
    }
    return Response(data, media_type=MEDIA_TYPES[request.output_format], headers=headers)


def image_response(encoded: Encoded) -> Response:
    """The first (or only) image's bytes, its seed in `X-Seed`."""
    return Response(encoded.images[0], media_type=encoded.media_type, headers=_headers(encoded))


def images_response(encoded: Encoded) -> JSONResponse:
    """Every image base64 in JSON; the resolved parameters are image 0's."""
    images = [
        EncodedImage(data=base64.b64encode(data).decode(), seed=seed, format=encoded.format)
        for data, seed in zip(encoded.images, encoded.seeds, strict=True)
    ]
    body = ImagesResponse(images=images, parameters=encoded.parameters, timings=encoded.timings)
    return JSONResponse(body.model_dump(mode="json"), headers=_headers(encoded))
