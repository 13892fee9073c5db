"""Control images: read like an edit's input, turned into a control map by a preprocessor
(`module`), and fitted to the output size. Runs in the public process, off its event loop;
plain OpenCV and Pillow, no model weights (so no depth or pose detector: those need
networks, which are not served; a client sends their maps with `module: none`).

The preprocessors are sd-webui-controlnet's model-free ones, by its names, with its
settings (`threshold_a`, `threshold_b` and the processing resolution) and their ranges:
`scripts/preprocessor/model_free_preprocessors.py` and `scripts/preprocessor/legacy/
processor.py` of Mikubill/sd-webui-controlnet at 56cec5b.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np
import PIL.Image

from imagegen.errors import InvalidField
from imagegen.inputs import WHITE, InputLimits, pack, read_image

ResizeMode = Literal["resize", "crop", "fill"]
Module = Literal[
    "none", "canny", "invert", "threshold", "scribble_xdog", "lineart_standard", "blur_gaussian"
]
MAX_CONTROLS = 3  # at once per request (MultiControlNet)
DEFAULT_RESOLUTION = 512  # sd-webui-controlnet's processing resolution when not given
RESOLUTION = (64, 2048)


@dataclass(frozen=True)
class Setting:
    """One of a preprocessor's settings: its meaning, range and default."""

    label: str
    low: float
    high: float
    default: float
    step: float = 1

    def value(self, given: float | None, field: str) -> float:
        if given is None:
            return self.default
        if not self.low <= given <= self.high:
            raise InvalidField(
                f"`{field}` ({self.label}) must be between {self.low:g} and {self.high:g}, "
                f"but is {given:g}.",
                field=field,
            )
        return given


@dataclass(frozen=True)
class Preprocessor:
    run: Callable[[np.ndarray, float, float], np.ndarray]  # RGB uint8 -> RGB uint8
    a: Setting | None = None
    b: Setting | None = None
    resolution: bool = True  # whether it works at a processing resolution (invert: as sent)
    label: str | None = None  # sd-webui-controlnet's name for people, where it has one


def _rgb(grey: np.ndarray) -> np.ndarray:
    return np.repeat(grey[:, :, None], 3, axis=2)


def _canny(image: np.ndarray, low: float, high: float) -> np.ndarray:
    return _rgb(cv2.Canny(image, int(low), int(high)))


def _threshold(image: np.ndarray, level: float, _: float) -> np.ndarray:
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    return _rgb(np.where(grey > level, 255, 0).astype(np.uint8))


def _scribble_xdog(image: np.ndarray, level: float, _: float) -> np.ndarray:
    sharp = cv2.GaussianBlur(image.astype(np.float32), (0, 0), 0.5)
    soft = cv2.GaussianBlur(image.astype(np.float32), (0, 0), 5.0)
    dog = (255 - np.min(soft - sharp, axis=2)).clip(0, 255).astype(np.uint8)
    result = np.zeros_like(image)
    result[2 * (255 - dog) > level] = 255
    return result


def _lineart_standard(image: np.ndarray, _a: float, _b: float) -> np.ndarray:
    pixels = image.astype(np.float32)
    blurred = cv2.GaussianBlur(pixels, (0, 0), 6.0)
    intensity = np.min(blurred - pixels, axis=2).clip(0, 255)
    strong = intensity[intensity > 8]
    intensity /= max(16.0, float(np.median(strong)) if strong.size else 0.0)
    return _rgb((intensity * 127).clip(0, 255).astype(np.uint8))


def _blur(image: np.ndarray, sigma: float, _: float) -> np.ndarray:
    return cv2.GaussianBlur(image, (0, 0), float(sigma))


PREPROCESSORS: dict[str, Preprocessor] = {
    "none": Preprocessor(lambda image, _a, _b: image, resolution=False),
    "canny": Preprocessor(
        _canny, Setting("Low Threshold", 1, 255, 100), Setting("High Threshold", 1, 255, 200)
    ),
    "invert": Preprocessor(
        lambda image, _a, _b: 255 - image,
        resolution=False,
        label="invert (from white bg & black line)",
    ),
    "threshold": Preprocessor(_threshold, Setting("Binarization Threshold", 0, 255, 127)),
    "scribble_xdog": Preprocessor(_scribble_xdog, Setting("XDoG Threshold", 1, 64, 32)),
    "lineart_standard": Preprocessor(
        _lineart_standard, label="lineart_standard (from white bg & black line)"
    ),
    "blur_gaussian": Preprocessor(_blur, Setting("Sigma", 0.01, 64, 9, step=0.01)),
}


def at_resolution(image: PIL.Image.Image, resolution: int) -> PIL.Image.Image:
    """``image`` scaled so its shorter side is ``resolution`` (what the map is drawn at)."""
    scale = resolution / min(image.size)
    size = (max(round(image.width * scale), 1), max(round(image.height * scale), 1))
    if size == image.size:
        return image
    smaller = scale < 1
    return image.resize(size, PIL.Image.Resampling.BOX if smaller else PIL.Image.Resampling.BICUBIC)


def pixel_perfect(size: tuple[int, int], target: tuple[int, int], mode: ResizeMode) -> int:
    """The processing resolution at which the map needs no resampling once fitted
    (sd-webui-controlnet's `pixel_perfect`)."""
    scales = (target[0] / size[0], target[1] / size[1])
    scale = min(scales) if mode == "fill" else max(scales)
    return int(np.clip(round(scale * min(size)), *RESOLUTION))


def detect(
    image: PIL.Image.Image,
    module: str,
    threshold_a: float | None = None,
    threshold_b: float | None = None,
    resolution: int = DEFAULT_RESOLUTION,
    field: str = "controlnets",
) -> PIL.Image.Image:
    """The control map ``module`` draws of an RGB ``image``, at ``resolution`` (its shorter
    side) where the module works at one."""
    preprocessor = PREPROCESSORS[module]
    a = preprocessor.a.value(threshold_a, f"{field}.threshold_a") if preprocessor.a else 0.0
    b = preprocessor.b.value(threshold_b, f"{field}.threshold_b") if preprocessor.b else 0.0
    if preprocessor.resolution:
        image = at_resolution(image, resolution)
    return PIL.Image.fromarray(preprocessor.run(np.asarray(image.convert("RGB")), a, b), "RGB")


def fit(image: PIL.Image.Image, size: tuple[int, int], mode: ResizeMode) -> PIL.Image.Image:
    """``image`` at ``size``: stretched (`resize`), covering it with the overflow cut evenly
    (`crop`), or inside it with the rest filled with the map's edge colour (`fill`)."""
    if image.size == size:
        return image
    if mode == "resize":
        return image.resize(size, PIL.Image.Resampling.LANCZOS)
    scales = (size[0] / image.width, size[1] / image.height)
    scale = min(scales) if mode == "fill" else max(scales)
    inner = (max(round(image.width * scale), 1), max(round(image.height * scale), 1))
    scaled = image.resize(inner, PIL.Image.Resampling.LANCZOS)
    left, top = (size[0] - inner[0]) // 2, (size[1] - inner[1]) // 2
    if mode == "crop":
        return scaled.crop((-left, -top, -left + size[0], -top + size[1]))
    edge = np.asarray(scaled)[[0, -1]].reshape(-1, 3).mean(axis=0)  # its top and bottom rows
    canvas = PIL.Image.new("RGB", size, tuple(int(v) for v in edge))
    canvas.paste(scaled, (left, top))
    return canvas


@dataclass(frozen=True)
class ControlInput:
    """What a request says of one control image, however it says it."""

    image: str
    module: str = "none"
    threshold_a: float | None = None
    threshold_b: float | None = None
    resize_mode: ResizeMode = "crop"
    resolution: int | None = None  # None: pixel perfect


def read_control(
    control: ControlInput, field: str, size: tuple[int, int], limits: InputLimits
) -> tuple[PIL.Image.Image, str]:
    """The control map of ``control`` at the output ``size``, and the SHA-256 of its file as
    sent."""
    picture, sha256 = read_image(control.image, f"{field}.image", limits, background=WHITE)
    resolution = control.resolution or pixel_perfect(picture.size, size, control.resize_mode)
    drawn = detect(
        picture, control.module, control.threshold_a, control.threshold_b, resolution, field
    )
    return fit(drawn, size, control.resize_mode), sha256


@dataclass(frozen=True)
class Controls:
    """A request's control maps at the output size, as they cross to the generator service
    (PNG, base64), and the SHA-256 of each image as sent."""

    maps: list[str]
    digests: list[str]


def read_controls(
    controls: list[tuple[str, ControlInput]], size: tuple[int, int], limits: InputLimits
) -> Controls:
    """Each ``(field, control)`` read and drawn at ``size``."""
    read = [read_control(control, field, size, limits) for field, control in controls]
    return Controls([pack(drawn) for drawn, _ in read], [digest for _, digest in read])
