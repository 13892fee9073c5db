"""The synthetic world ``sd-shapes`` learns and is judged in: one flat shape of one colour on a
flat background of another, captioned ``"a {colour} {shape} on a {background} background"``.

``draw`` makes training images; ``measure`` reads a generated image back into words, the
inverse, so the quality benchmark and the semantic tests score images the same way. No torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

SIDE = 64  # pixels: the model's native size
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (210, 25, 35),
    "green": (30, 160, 50),
    "blue": (35, 65, 225),
    "yellow": (250, 230, 40),
    "white": (245, 245, 245),
    "black": (15, 15, 15),
    "purple": (145, 45, 175),
    "orange": (250, 135, 0),
}
SHAPES = ("circle", "square", "triangle")
# A shape's side or diameter, and the margin it keeps from the image's edge (the border the
# background is measured on stays clear).
SIZES = (26, 44)
MARGIN = 6
SUPERSAMPLE = 4  # drawn this much larger, then averaged down: anti-aliased edges
# What the grammar is made of, for the training recipe's hash: drawing changes, hash changes.
WORLD: dict[str, Any] = {
    "side": SIDE,
    "colours": COLOURS,
    "shapes": SHAPES,
    "sizes": SIZES,
    "margin": MARGIN,
    "supersample": SUPERSAMPLE,
}
WORDS = ("a", "on", "background", "shape", *COLOURS, *SHAPES)


def caption(colour: str | None, shape: str | None, background: str | None) -> str:
    """The grammar, with any part left out: ``a red circle``, ``a circle on a blue background``,
    ``a blue background``; all three left out is the empty caption."""
    thing = " ".join(word for word in (colour, shape) if word)
    if thing and colour and not shape:
        thing += " shape"
    parts = [f"a {thing}"] if thing else []
    if background:
        parts.append(f"a {background} background")
    return " on ".join(parts)


@dataclass(frozen=True)
class Scene:
    colour: str
    shape: str
    background: str
    size: int
    centre: tuple[int, int]

    @property
    def caption(self) -> str:
        return caption(self.colour, self.shape, self.background)


def random_scene(rng: np.random.Generator) -> Scene:
    colour, background = rng.choice(list(COLOURS), size=2, replace=False)
    size = int(rng.integers(SIZES[0], SIZES[1] + 1))
    low, high = size // 2 + MARGIN, SIDE - size // 2 - MARGIN
    centre = (int(rng.integers(low, high + 1)), int(rng.integers(low, high + 1)))
    return Scene(str(colour), str(rng.choice(SHAPES)), str(background), size, centre)


def draw(scene: Scene) -> np.ndarray:
    """The scene as a (64, 64, 3) uint8 image."""
    return paint(scene, COLOURS[scene.colour], COLOURS[scene.background])


def silhouette(scene: Scene) -> np.ndarray:
    """The scene's shape in white on black, (64, 64, 3) uint8: what its control image shows."""
    return paint(scene, (255, 255, 255), (0, 0, 0))


def paint(scene: Scene, fill: tuple[int, int, int], background: tuple[int, int, int]) -> np.ndarray:
    scale = SUPERSAMPLE
    image = Image.new("RGB", (SIDE * scale, SIDE * scale), background)
    x, y = (c * scale for c in scene.centre)
    half = scene.size * scale / 2
    box = (x - half, y - half, x + half, y + half)
    pen = ImageDraw.Draw(image)
    if scene.shape == "circle":
        pen.ellipse(box, fill=fill)
    elif scene.shape == "square":
        pen.rectangle(box, fill=fill)
    else:  # an upright triangle: half of its bounding box
        pen.polygon([(x, y - half), (x + half, y + half), (x - half, y + half)], fill=fill)
    return np.asarray(image.resize((SIDE, SIDE), Image.Resampling.BOX))


# Reading an image back. The background is the median of the border; the shape is every
# pixel inside the border far from it; its kind is how much of its bounding box it fills: a
# drawn square all of it, a circle pi/4, a triangle half. The VAE rounds corners and tips (its
# reconstructions of drawn scenes fill 0.96, 0.79 and 0.60 on average), so the cut-offs lie
# halfway between those.
BORDER = 3
# RGB distance from the background that makes a pixel part of the shape (the closest two
# colours, yellow and orange, are 103 apart).
FAR = 60.0
MIN_SHAPE_PIXELS = 30
FILL_CUTS = ((0.87, "square"), (0.70, "circle"), (0.0, "triangle"))


@dataclass(frozen=True)
class Reading:
    background: str
    colour: str | None  # None: no shape found
    shape: str | None
    fill: float  # share of the shape's bounding box it covers


def nearest_colour(rgb: np.ndarray) -> str:
    names = list(COLOURS)
    palette = np.array([COLOURS[name] for name in names], dtype=np.float64)
    return names[int(np.argmin(((palette - rgb) ** 2).sum(axis=1)))]


def shape_mask(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(the background's median colour, the mask of pixels far from it)."""
    pixels = image.astype(np.float64)
    border = np.concatenate(
        [
            pixels[:BORDER].reshape(-1, 3),
            pixels[-BORDER:].reshape(-1, 3),
            pixels[:, :BORDER].reshape(-1, 3),
            pixels[:, -BORDER:].reshape(-1, 3),
        ]
    )
    background = np.median(border, axis=0)
    far = np.linalg.norm(pixels - background, axis=2) > FAR
    # The border is background by construction (shapes keep a margin): a decoder's stray
    # corner pixels there must not stretch the shape's bounding box.
    far[:BORDER], far[-BORDER:], far[:, :BORDER], far[:, -BORDER:] = False, False, False, False
    return background, far


def measure(image: np.ndarray | Image.Image) -> Reading:
    """What a (H, W, 3) image shows, in the grammar's words."""
    pixels = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image)
    background, mask = shape_mask(pixels)
    found = nearest_colour(background)
    if mask.sum() < MIN_SHAPE_PIXELS:
        return Reading(found, None, None, 0.0)
    rows, cols = np.nonzero(mask)
    box = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
    fill = float(mask.sum() / box)
    shape = next(name for cut, name in FILL_CUTS if fill >= cut)
    colour = nearest_colour(np.median(pixels[mask].astype(np.float64), axis=0))
    return Reading(found, colour, shape, fill)
