"""What the generator service answers for each image of a batch. Plain data, no torch: the
public service receives these through BentoML's serialisation without loading any ML library."""

from __future__ import annotations

from typing import Literal

from PIL.Image import Image
from pydantic import BaseModel, ConfigDict

from .errors import Cancelled, GenerationFailed, InvalidField, OutOfMemory, ServiceError
from .schemas import GenerationParameters


class Generation(BaseModel):
    """One image and how it was made. Crosses from the generator service to the public one."""

    model_config = ConfigDict(arbitrary_types_allowed=True, frozen=True)

    image: Image
    parameters: GenerationParameters  # what this image was made with, its own seed included
    started: float  # perf_counter, in the pipeline's process, when its pipeline call began
    finished: float
    batch_size: int  # images made by that call


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
