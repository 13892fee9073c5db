"""What the front-end replays share: how each tool sends credentials, and reading the images
it gets back as the tool does."""

from __future__ import annotations

import base64
import io

from PIL import Image

from tests.conftest import Frontend


def basic(credentials: str) -> str:
    """An `Authorization` header of HTTP basic auth as these tools build it: `Basic ` and the
    base64 of what the user typed, empty included (`Basic `)."""
    return f"Basic {base64.b64encode(credentials.encode()).decode()}"


def typed_credentials(frontend: Frontend) -> str:
    """What a user types in a tool's `user:password` field: the key as the password."""
    return f"user:{frontend.key}" if frontend.key else ""


def png(data: str) -> Image.Image:
    """A base64 image as the tools decode it (bare base64, PNG)."""
    image = Image.open(io.BytesIO(base64.b64decode(data)))
    assert image.format == "PNG"
    return image
