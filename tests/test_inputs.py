"""Client images are decoded and bounded before any pipeline sees them: hostile headers,
truncated files, foreign formats and the odd modes real files come in."""

from __future__ import annotations

import base64
import hashlib
import io
import struct
import zlib
from typing import Any

import numpy as np
import pytest
from PIL import Image

from imagegen.errors import InvalidField
from imagegen.inputs import Edit, InputLimits, read_edit, read_image, unpack
from imagegen.settings import Settings

DEFAULTS = InputLimits(
    max_pixels=Settings.model_fields["max_input_pixels"].default,
    max_bytes=Settings.model_fields["max_input_bytes"].default,
)
WHITE, BLACK = (255, 255, 255), (0, 0, 0)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def encoded(image: Image.Image, fmt: str = "PNG", **options: Any) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return b64(buffer.getvalue())


def png(width: int, height: int, bit_depth: int, colour_type: int, rows: bytes | None) -> bytes:
    """A PNG written by hand, so its header can claim anything."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    data = chunk(b"IDAT", zlib.compress(rows if rows is not None else b"\0" * 64))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + data + chunk(b"IEND", b"")


def refusal(text: str, field: str = "image", limits: InputLimits = DEFAULTS) -> str:
    with pytest.raises(InvalidField) as caught:
        read_image(text, field, limits, WHITE)
    assert caught.value.field == field
    assert caught.value.status_code == 400
    return caught.value.message


def edit(image: Image.Image, mask: Image.Image | None = None, **size: Any) -> Edit:
    return read_edit(
        encoded(image),
        None if mask is None else encoded(mask),
        size.get("width"),
        size.get("height"),
        DEFAULTS,
    )


def test_a_decompression_bomb_header_is_refused_before_decoding() -> None:
    # 400 megapixels claimed: past Pillow's own bomb error, refused from the header.
    message = refusal(b64(png(20000, 20000, 8, 2, None)))
    assert "`image` must have at most" in message and "IMAGEGEN_MAX_INPUT_PIXELS" in message


def test_a_header_over_the_limit_but_under_pillows_threshold_is_refused() -> None:
    # 9 megapixels: Pillow would decode it without a warning; the service's limit is lower.
    message = refusal(b64(png(3000, 3000, 8, 2, None)))
    assert "but is 3000x3000 (9000000)" in message


def test_a_lower_pixel_limit_is_honoured() -> None:
    image = encoded(Image.new("RGB", (128, 128)))
    message = refusal(image, limits=InputLimits(max_pixels=100 * 100, max_bytes=10**6))
    assert "at most 10000 pixels" in message


def test_a_file_over_the_byte_limit_is_refused() -> None:
    image = encoded(Image.effect_noise((128, 128), 64).convert("RGB"))
    message = refusal(image, limits=InputLimits(max_pixels=10**6, max_bytes=1000))
    assert "must be at most 1000 bytes once decoded" in message


def test_a_truncated_png_is_refused() -> None:
    whole = base64.b64decode(encoded(Image.effect_noise((64, 64), 64).convert("RGB")))
    message = refusal(b64(whole[: len(whole) // 2]))
    assert "truncated or corrupt" in message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("not base64 at all!", "must be base64"),
        (b64(b"plain text, not an image"), "must be a PNG, JPEG or WebP"),
        (encoded(Image.new("RGB", (64, 64)), "GIF"), "must be a PNG, JPEG or WebP"),
        # A declared type is not believed: BMP bytes named a PNG.
        (
            "data:image/png;base64," + encoded(Image.new("RGB", (64, 64)), "BMP"),
            "must be a PNG, JPEG or WebP",
        ),
        (b64(b"\x89PNG\r\n\x1a\n" + b"\0" * 40), "header is broken"),
    ],
    ids=["bad-base64", "text", "gif", "bmp-named-png", "broken-header"],
)
def test_what_is_not_a_png_jpeg_or_webp_is_refused(text: str, expected: str) -> None:
    assert expected in refusal(text)


def test_a_data_url_prefix_is_allowed() -> None:
    text = "data:image/png;base64," + encoded(Image.new("RGB", (64, 64), (10, 20, 30)))
    image, _ = read_image(text, "image", DEFAULTS, WHITE)
    assert image.getpixel((5, 5)) == (10, 20, 30)


def test_the_hash_is_of_the_file_as_sent() -> None:
    text = encoded(Image.new("RGB", (64, 64), (1, 2, 3)))
    _, digest = read_image(text, "image", DEFAULTS, WHITE)
    assert digest == hashlib.sha256(base64.b64decode(text)).hexdigest()


def test_a_cmyk_jpeg_is_converted_to_rgb() -> None:
    cyan = Image.new("CMYK", (64, 64), (255, 0, 0, 0))
    image, _ = read_image(encoded(cyan, "JPEG", quality=95), "image", DEFAULTS, WHITE)
    red, green, blue = image.getpixel((32, 32))  # type: ignore[misc]
    assert image.mode == "RGB" and red < 10 and green > 245 and blue > 245


def test_an_animated_webp_gives_its_first_frame() -> None:
    frames = [Image.new("RGB", (64, 64), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    text = encoded(frames[0], "WEBP", save_all=True, append_images=frames[1:], lossless=True)
    assert Image.open(io.BytesIO(base64.b64decode(text))).n_frames == 2  # type: ignore[attr-defined]
    image, _ = read_image(text, "image", DEFAULTS, WHITE)
    assert image.getpixel((32, 32)) == (255, 0, 0)


def test_a_16_bit_grey_png_is_scaled_not_clipped() -> None:
    # Pillow's own conversion of 16-bit grey clips every value over 255 to white.
    row = b"\0" + struct.pack(">H", 0x8000) * 64
    image, _ = read_image(b64(png(64, 64, 16, 0, row * 64)), "image", DEFAULTS, WHITE)
    assert image.getpixel((10, 10)) == (128, 128, 128)


def test_a_16_bit_rgb_png_keeps_its_colours() -> None:
    row = b"\0" + struct.pack(">HHH", 0xFFFF, 0x8000, 0x0000) * 64
    image, _ = read_image(b64(png(64, 64, 16, 2, row * 64)), "image", DEFAULTS, WHITE)
    assert image.getpixel((10, 10)) == (255, 128, 0)


def test_the_exif_orientation_is_applied() -> None:
    # Stored 96 wide with red on the left; orientation 6 means "turn 90 degrees clockwise to
    # view", so it arrives 64 wide and 96 high, red at the top.
    stored = Image.new("RGB", (96, 64), (0, 0, 255))
    stored.paste((255, 0, 0), (0, 0, 48, 64))
    exif = Image.Exif()
    exif[0x0112] = 6
    image, _ = read_image(encoded(stored, "JPEG", exif=exif), "image", DEFAULTS, WHITE)
    assert image.size == (64, 96)
    top, bottom = image.getpixel((32, 10)), image.getpixel((32, 86))
    assert top[0] > 200 > top[2] and bottom[2] > 200 > bottom[0]  # type: ignore[index]


def test_alpha_is_flattened_onto_white_for_an_image_and_black_for_a_mask() -> None:
    clear = encoded(Image.new("RGBA", (64, 64), (200, 0, 0, 0)))
    assert read_image(clear, "image", DEFAULTS, WHITE)[0].getpixel((1, 1)) == WHITE
    assert read_image(clear, "mask", DEFAULTS, BLACK)[0].getpixel((1, 1)) == BLACK
    half = encoded(Image.new("LA", (64, 64), (0, 128)))
    assert read_image(half, "image", DEFAULTS, WHITE)[0].getpixel((1, 1)) == (127, 127, 127)


def test_a_palette_image_with_transparency_is_converted() -> None:
    palette = Image.new("P", (64, 64), 1)
    palette.putpalette([0, 0, 0, 0, 200, 0] + [0] * 762)
    palette.paste(0, (0, 0, 32, 64))
    text = encoded(palette, transparency=0)
    image, _ = read_image(text, "image", DEFAULTS, WHITE)
    assert image.getpixel((10, 10)) == WHITE and image.getpixel((50, 10)) == (0, 200, 0)


def test_blank_sizes_take_the_image_size_rounded_down_by_cropping() -> None:
    noise = Image.effect_noise((515, 300), 64).convert("RGB")
    made = edit(noise)
    assert (made.width, made.height) == (512, 296)
    image = unpack(made.image)
    # Cropped at the right and bottom: the kept pixels are where they were.
    assert np.array_equal(np.asarray(image), np.asarray(noise)[:296, :512])


def test_one_given_side_keeps_the_image_aspect() -> None:
    made = edit(Image.new("RGB", (256, 128)), width=128)
    assert (made.width, made.height) == (128, 64)
    assert unpack(made.image).size == (128, 64)


def test_both_sides_given_resize_the_image_and_its_mask() -> None:
    mask = Image.new("L", (200, 100), 0)
    mask.paste(255, (100, 0, 200, 100))
    made = edit(Image.new("RGB", (200, 100)), mask, width=64, height=64)
    assert unpack(made.image).size == (64, 64)
    assert made.mask is not None
    resized = np.asarray(unpack(made.mask))
    assert resized.shape == (64, 64) and set(np.unique(resized)) == {0, 255}
    assert resized[:, :30].max() == 0 and resized[:, 34:].min() == 255


def test_an_image_too_small_for_a_generation_is_refused() -> None:
    with pytest.raises(InvalidField) as caught:
        edit(Image.new("RGB", (40, 300)))
    assert caught.value.field == "image"
    assert "`width` taken from `image` must be between 64 and 2048, but is 40" in str(caught.value)


def test_a_mask_of_another_size_is_refused() -> None:
    with pytest.raises(InvalidField) as caught:
        edit(Image.new("RGB", (64, 64)), Image.new("L", (64, 72)))
    assert caught.value.field == "mask"
    assert "must be the size of `image` (64x64), but is 64x72" in str(caught.value)


def test_a_mask_is_cut_at_half_grey() -> None:
    mask = Image.new("L", (64, 64), 100)
    mask.paste(200, (32, 0, 64, 64))
    made = edit(Image.new("RGB", (64, 64)), mask)
    assert made.mask is not None and made.mask_sha256 is not None
    cut = unpack(made.mask)
    assert cut.getpixel((10, 10)) == 0 and cut.getpixel((50, 10)) == 255
