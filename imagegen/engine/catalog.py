"""The generator service's models: one model-store declaration and one batched API per served
model.

BentoML's adaptive batching runs one batch at a time per API, and a sync API's batches share
the service's worker threads; one API per model, with a thread each, gives every model its
own batch queue, so a slow model never holds up a fast one, and a batch never mixes models.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any

import bentoml
from bentoml.models import BentoModel
from bentoml.validators import ContentType

from imagegen.direct_hop import Batcher, DirectServer, Outcomes, socket_path
from imagegen.hop import api_name, model_name
from imagegen.schemas import WorkItem
from models.adapters import stored_adapters
from models.controlnets import fitting_controlnets
from models.store import StoredPipeline, served_families
from models.upscalers import stored_upscalers

if TYPE_CHECKING:  # the public process imports this module, and never torch
    from imagegen.engine.generation import PipelineRunner

# What a batched API answers. Its media type is declared because, without one, BentoML derives
# it from the answer's JSON schema, generated anew on every response (3 ms, measured); pickle
# is what the dependency client sends and reads on this hop.
PickledOutcomes = Annotated[Outcomes, ContentType("application/vnd.bentoml+pickle")]


def with_models(tags: list[str], batching: dict[str, Any]) -> Callable[[type], type]:
    """A class decorator: adds ``model_<k>`` declaring the k-th model, ``lora_<k>`` the
    k-th stored LoRA adapter of any of them, ``upscaler_<k>`` the k-th stored upscaler and
    ``controlnet_<k>`` the k-th stored ControlNet that fits one of them (``bentoml build`` packs
    each), and a batched API per model, named by :func:`api_name`, that runs
    ``self.runners[name]``. Applied under ``@bentoml.service``, which collects them all.
    Adapters, upscalers and ControlNets are found in the store here, at start-up: one
    imported later is served after a restart."""

    def declare(cls: type) -> type:
        for index, tag in enumerate(tags):
            setattr(cls, f"model_{index}", StoredPipeline(tag))
            setattr(cls, api_name(tag), bentoml.api(**batching)(generate_api(tag)))
        adapters = stored_adapters([model_name(tag) for tag in tags])
        for index, adapter in enumerate(adapters):
            setattr(cls, f"lora_{index}", BentoModel(adapter.tag))
        for index, upscaler in enumerate(stored_upscalers()):
            setattr(cls, f"upscaler_{index}", BentoModel(upscaler.tag))
        controlnets = fitting_controlnets(tags, served_families(tags))
        for index, controlnet in enumerate(controlnets):
            setattr(cls, f"controlnet_{index}", BentoModel(controlnet.tag))
        return cls

    return declare


def generate_api(tag: str) -> Any:
    def generate(self: Any, batch: list[WorkItem]) -> PickledOutcomes:
        """One outcome per item: its image, or the failure of its pipeline call."""
        return self.runners[model_name(tag)].generate_batch(batch)

    generate.__name__ = api_name(tag)
    return generate


def open_direct_hop(runners: dict[str, PipelineRunner], max_batch_size: int) -> DirectServer | None:
    """Each model's queue of the hop's short way (:mod:`imagegen.direct_hop`), listening
    beside BentoML's socket; None where BentoML serves this service on none."""
    path = socket_path()
    if path is None:
        return None
    server = DirectServer(
        {
            api_name(name): Batcher(runner.lane, runner.generate_batch, max_batch_size)
            for name, runner in runners.items()
        }
    )
    server.start(path)
    return server


def declared(service: Any, kind: str) -> list[bentoml.Model]:
    """What ``with_models`` declared on ``service`` (``kind`` ``model``, ``lora``,
    ``upscaler`` or ``controlnet``), in order, resolved from the store."""
    count = 0
    while hasattr(type(service), f"{kind}_{count}"):
        count += 1
    return [getattr(service, f"{kind}_{index}") for index in range(count)]
