"""What crosses the hop between the two processes: the generator's API per model, what it
answers for each image of a batch, and its step events. Plain data, no torch: the public
service receives these through BentoML's serialisation without loading any ML library."""

from __future__ import annotations

import re
from typing import Any, Literal

from PIL.Image import Image
from pydantic import BaseModel, ConfigDict

from imagegen.errors import Cancelled, GenerationFailed, InvalidField, OutOfMemory, ServiceError
from imagegen.schemas import GenerationParameters

# A step event of a reported item (``id``, ``step``, ``steps``, ``at``, ``images``, maybe
# ``preview``), published by the pipeline thread and followed by the public process.
Event = dict[str, Any]
# The first line of the generator service's event stream, so a follower knows it is open.
CONNECTED: Event = {"connected": True}


def model_name(tag: str) -> str:
    return tag.split(":")[0]


def api_name(tag: str) -> str:
    """The generator service's batched API for the model ``tag`` (``name[:version]``)."""
    return "generate_" + re.sub(r"[^0-9a-zA-Z_]", "_", model_name(tag))


class Generation(BaseModel):
    """One image and how it was made. Crosses from the generator service to the public one."""

    model_config = ConfigDict(arbitrary_types_allowed=True, frozen=True)

    image: Image
    parameters: GenerationParameters  # what this image was made with, its own seed included
    # perf_counter in the generator's process: its batch arrived in the generator's API, its
    # pipeline call began, the call's last denoising step ended (the decode follows), it ended
    received: float
    started: float
    denoised: float
    finished: float
    batch_size: int  # images made by that call


class UpscaleItem(BaseModel):
    """An image for an upscaler of the generator service; ``id`` cancels it."""

    id: str
    image: str  # PNG, base64
    width: int
    height: int
    upscaler: str
    crop: bool = False  # fill width x height, cutting the overflow, rather than stretch


class Failure(BaseModel):
    """An image that was refused or whose pipeline call failed: the error its request gets."""

    error: Literal["OutOfMemory", "GenerationFailed", "InvalidField", "Cancelled"]
    message: str
    field: str | None = None  # the request field an InvalidField names

    @classmethod
    def of(cls, error: OutOfMemory | GenerationFailed | InvalidField | Cancelled) -> Failure:
        return cls(error=type(error).__name__, message=error.message, field=error.field)

    def exception(self) -> ServiceError:
        errors: dict[str, type[ServiceError]] = {
            "OutOfMemory": OutOfMemory,
            "GenerationFailed": GenerationFailed,
            "InvalidField": InvalidField,
            "Cancelled": Cancelled,
        }
        return errors[self.error](self.message, field=self.field)
