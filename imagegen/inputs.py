"""Client images, decoded and bounded in one place before any pipeline sees them (issue 12).

A field's image passes these checks in order; the first it fails is a 400 naming the field:

1. base64 that decodes (a ``data:image/...;base64,`` prefix is allowed), at most
   ``max_bytes`` once decoded;
2. a PNG, JPEG or WebP by its first bytes: a declared name or type is never read;
3. its header's size at most ``max_pixels``, checked when Pillow has read the header and
   before any pixel is decoded (so a 20000x20000 bomb costs nothing, whatever Pillow's own
   threshold);
4. its first frame decoded in full: a truncated file fails here. An animated image gives its
   first frame.

It is then normalised: EXIF orientation applied; 16-bit grey scaled to 8 bits (Pillow's own
conversion would clip it to white); palette, CMYK and grey converted; alpha flattened onto
white for an image (as AUTOMATIC1111 does) and onto black for a mask (transparent is kept).
A mask is made binary at half grey: white (>= 128) is repainted, black kept.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import re
import warnings
from dataclasses import dataclass

import numpy as np
import PIL.Image
from PIL import ImageOps

from imagegen.errors import InvalidField
from imagegen.upscalers import MAX_OUTPUT_SIDE

SIGNATURES = {"PNG": (b"\x89PNG\r\n\x1a\n",), "JPEG": (b"\xff\xd8\xff",)}
DATA_URL = re.compile(r"^data:image/[a-z.+-]+;base64,", re.IGNORECASE)
SIDE = (64, 2048)  # the bounds of `width` and `height`
MULTIPLE = 8
WHITE, BLACK = (255, 255, 255), (0, 0, 0)  # what an image's and a mask's alpha is flattened on


@dataclass(frozen=True)
class InputLimits:
    max_pixels: int
    max_bytes: int


@dataclass(frozen=True)
class Edit:
    """A request's input image (and mask) at the output size, ready for the generator
    service: lossless PNGs, base64."""

    image: str
    mask: str | None
    width: int
    height: int
    image_sha256: str
    mask_sha256: str | None


def sniff(data: bytes) -> str | None:
    """The format by content: PNG, JPEG or WebP, else None."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return next((name for name, starts in SIGNATURES.items() if data.startswith(starts)), None)


def unbase64(text: str, field: str, limits: InputLimits) -> bytes:
    try:
        data = base64.b64decode(DATA_URL.sub("", text.strip(), count=1), validate=True)
    except (binascii.Error, ValueError):
        raise InvalidField(f"`{field}` must be base64, but does not decode.", field=field) from None
    if len(data) > limits.max_bytes:
        raise InvalidField(
            f"`{field}` must be at most {limits.max_bytes} bytes once decoded, but is {len(data)}.",
            field=field,
        )
    return data


def opened(data: bytes, field: str, limits: InputLimits) -> PIL.Image.Image:
    """The image's header read and its size checked; no pixel decoded yet."""
    kind = sniff(data)
    if kind is None:
        raise InvalidField(
            f"`{field}` must be a PNG, JPEG or WebP image, but its content is none of them.",
            field=field,
        )
    too_many = (
        f"`{field}` must have at most {limits.max_pixels} pixels (`IMAGEGEN_MAX_INPUT_PIXELS`)"
    )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", PIL.Image.DecompressionBombWarning)
            image = PIL.Image.open(io.BytesIO(data), formats=[kind])
    except PIL.Image.DecompressionBombError:
        # Past Pillow's own bound, which is far above ours: refused from the header alone.
        raise InvalidField(f"{too_many}, but its header claims far more.", field=field) from None
    except (OSError, ValueError, SyntaxError):
        raise InvalidField(
            f"`{field}` must be a readable {kind} image, but its header is broken.", field=field
        ) from None
    width, height = image.size
    if width * height > limits.max_pixels:
        raise InvalidField(f"{too_many}, but is {width}x{height} ({width * height}).", field=field)
    return image


def decoded(image: PIL.Image.Image, field: str) -> PIL.Image.Image:
    """The first frame's pixels, upright."""
    try:
        image.seek(0)
        image.load()
    except (OSError, ValueError, SyntaxError, EOFError):
        raise InvalidField(
            f"`{field}` must be a complete {image.format} image, but it is truncated or corrupt.",
            field=field,
        ) from None
    return ImageOps.exif_transpose(image)


def flattened(image: PIL.Image.Image, background: tuple[int, int, int]) -> PIL.Image.Image:
    """RGB, whatever the mode: alpha composited onto ``background``."""
    if image.mode.startswith("I"):
        # 16-bit grey (PNG's "I;16") or 32-bit integers: Pillow's convert clips to 255.
        samples = np.asarray(image, dtype=np.uint32) >> 8
        image = PIL.Image.fromarray(np.clip(samples, 0, 255).astype(np.uint8), "L")
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        ground = PIL.Image.new("RGBA", rgba.size, (*background, 255))
        return PIL.Image.alpha_composite(ground, rgba).convert("RGB")
    return image.convert("RGB")


def read_image(
    text: str, field: str, limits: InputLimits, background: tuple[int, int, int]
) -> tuple[PIL.Image.Image, str]:
    """An RGB image from a client's base64, and the SHA-256 of its file."""
    data = unbase64(text, field, limits)
    image = decoded(opened(data, field, limits), field)
    return flattened(image, background), hashlib.sha256(data).hexdigest()


def inverted_mask(text: str, field: str, limits: InputLimits) -> str:
    """A mask with black and white swapped (AUTOMATIC1111's `inpainting_mask_invert`), read
    through the checks above first; base64 PNG, for the native `mask`."""
    drawn, _ = read_image(text, field, limits, background=BLACK)
    return pack(ImageOps.invert(drawn.convert("L")))


def output_size(size: tuple[int, int], width: int | None, height: int | None) -> tuple[int, int]:
    """The size an edit makes: the requested one; a blank side is the image's, or follows the
    other side's scale when that one is given; rounded down to a multiple of 8."""
    image_width, image_height = size
    if width is not None and height is not None:
        return width, height
    if width is not None:
        return width, rounded_down(image_height * width / image_width)
    if height is not None:
        return rounded_down(image_width * height / image_height), height
    return rounded_down(image_width), rounded_down(image_height)


def upscaled_size(
    size: tuple[int, int], scale: float | None, width: int | None, height: int | None
) -> tuple[int, int]:
    """The size `/upscale` makes of an image of ``size``: ``scale`` times it (2 when blank),
    or the asked sides, a blank one following the other's scale; each side at most
    ``MAX_OUTPUT_SIDE``."""
    image_width, image_height = size
    if width is not None and height is not None:
        out = width, height
    elif width is not None:
        out = width, max(round(image_height * width / image_width), 1)
    elif height is not None:
        out = max(round(image_width * height / image_height), 1), height
    else:
        factor = scale or 2.0
        out = round(image_width * factor), round(image_height * factor)
    if max(out) > MAX_OUTPUT_SIDE:
        raise InvalidField(
            f"The upscaled image must be at most {MAX_OUTPUT_SIDE} pixels a side, but would be "
            f"{out[0]}x{out[1]} from {image_width}x{image_height}.",
            field="width" if width is not None or height is not None else "scale",
        )
    return out


def rounded_down(side: float) -> int:
    return int(side) // MULTIPLE * MULTIPLE


def pack(image: PIL.Image.Image) -> str:
    """Lossless, fast to write: how an image travels to the generator service."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    return base64.b64encode(buffer.getvalue()).decode()


def unpack(data: str) -> PIL.Image.Image:
    image = PIL.Image.open(io.BytesIO(base64.b64decode(data)), formats=["PNG"])
    image.load()
    return image


def fitted(image: PIL.Image.Image, size: tuple[int, int]) -> PIL.Image.Image:
    """``image`` at ``size``: cropped at its right and bottom edges when only rounding to a
    multiple of 8 is needed (the kept pixels stay where they were), resized otherwise."""
    if image.size == size:
        return image
    width, height = size
    if 0 <= image.width - width < MULTIPLE and 0 <= image.height - height < MULTIPLE:
        return image.crop((0, 0, width, height))
    return image.resize(size, PIL.Image.Resampling.LANCZOS)


def check_size(size: tuple[int, int]) -> None:
    """A size taken from the image must be one the request could have asked for."""
    low, high = SIDE
    for name, side in zip(("width", "height"), size, strict=True):
        if not low <= side <= high:
            raise InvalidField(
                f"`{name}` taken from `image` must be between {low} and {high}, but is "
                f"{side}; give `width` and `height` to resize it.",
                field="image",
            )


def read_edit(
    image: str, mask: str | None, width: int | None, height: int | None, limits: InputLimits
) -> Edit:
    """A request's image and mask, checked, normalised and brought to the output size."""
    picture, image_sha256 = read_image(image, "image", limits, background=WHITE)
    size = output_size(picture.size, width, height)
    check_size(size)
    packed_mask = mask_sha256 = None
    if mask is not None:
        drawn, mask_sha256 = read_image(mask, "mask", limits, background=BLACK)
        if drawn.size != picture.size:
            raise InvalidField(
                f"`mask` must be the size of `image` ({picture.width}x{picture.height}), but "
                f"is {drawn.width}x{drawn.height}.",
                field="mask",
            )
        grey = fitted(drawn.convert("L"), size)
        packed_mask = pack(grey.point(lambda value: 255 if value >= 128 else 0))
    return Edit(
        image=pack(fitted(picture, size)),
        mask=packed_mask,
        width=size[0],
        height=size[1],
        image_sha256=image_sha256,
        mask_sha256=mask_sha256,
    )
