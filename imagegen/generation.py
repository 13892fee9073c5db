"""Turn a request into an image with one loaded pipeline, safely under concurrency."""

from __future__ import annotations

import copy
import logging
import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from contextvars import copy_context
from dataclasses import dataclass
from functools import cache
from typing import Any

import prometheus_client
import torch
from PIL.Image import Image

from models.loading import LoadedModel

from .errors import GenerationFailed, InvalidField, OutOfMemory
from .schedulers import build_scheduler
from .schemas import MAX_SEED, GenerationParameters, ImageRequest

logger = logging.getLogger(__name__)


@cache
def generation_seconds() -> prometheus_client.Histogram:
    # Created on first use, not at import: BentoML points prometheus_client at its
    # multiprocess directory only after the service module is imported.
    return prometheus_client.Histogram(
        "imagegen_generation_seconds",
        "Time the pipeline spends generating one request's image.",
        labelnames=["model"],
        buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160),
    )


@dataclass(frozen=True)
class Generation:
    image: Image
    parameters: GenerationParameters  # what this image was made with, its own seed included
    queue_seconds: float  # waiting for the model's thread
    inference_seconds: float


class ImageGenerator:
    """Runs one loaded pipeline.

    Every pipeline call, the warm-up included, runs on one thread of its own. That serialises
    calls per model (one generation already keeps the device busy, and one at a time makes
    every image independent of what else is in flight), and it keeps torch's CPU kernels on
    one OpenMP thread team: calls from a second thread start a second team that competes for
    the same cores, about 3x slower on two cores. Each call also gets its own scheduler and
    seeded generator, so nothing per-request is written onto the shared pipeline.
    """

    def __init__(self, model: LoadedModel) -> None:
        self.model = model
        self._runner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pipeline")

    def resolve(self, request: ImageRequest, count: int = 1) -> GenerationParameters:
        """Fill blank fields with the model's defaults and check what depends on the model.
        A drawn seed leaves room for ``count`` consecutive seeds."""
        info = self.model.info
        if request.model not in (None, info.name, self.model.tag):
            raise InvalidField(
                f"`model` must be one of the loaded models ({self.model.tag}), "
                f"but is {request.model!r}.",
                field="model",
            )
        if request.scheduler is not None and request.scheduler not in info.schedulers:
            raise InvalidField(
                f"`scheduler` must be one of {', '.join(info.schedulers)} for {info.name}, "
                f"but is {request.scheduler!r}.",
                field="scheduler",
            )
        return GenerationParameters(
            prompt=request.prompt,
            negative_prompt=request.negative_prompt,
            width=request.width or info.native_width,
            height=request.height or info.native_height,
            num_inference_steps=request.num_inference_steps or info.default_steps,
            guidance_scale=(
                info.default_guidance_scale
                if request.guidance_scale is None
                else request.guidance_scale
            ),
            seed=secrets.randbelow(MAX_SEED + 2 - count) if request.seed is None else request.seed,
            scheduler=request.scheduler or info.default_scheduler,
            model=self.model.tag,
        )

    def generate(self, parameters: GenerationParameters) -> Generation:
        pipeline = self.model.pipeline
        scheduler = (
            # The model's own scheduler may be outside the registry: copy it as it is.
            type(pipeline.scheduler).from_config(pipeline.scheduler.config)
            if parameters.scheduler == self.model.info.default_scheduler
            else build_scheduler(parameters.scheduler, pipeline.scheduler)
        )
        # __call__ writes per-call state onto the pipeline (guidance, step counts), so each call
        # runs on its own shallow copy: the weights are shared, the state is not.
        run = copy.copy(pipeline)
        run.scheduler = scheduler
        queued = time.perf_counter()
        # The request's context (its id, for log lines) goes along to the runner thread.
        call = self._runner.submit(copy_context().run, self._call, run, parameters)
        try:
            output, started, finished = call.result()
        except torch.OutOfMemoryError as error:
            logger.warning("out of device memory at %dx%d", parameters.width, parameters.height)
            torch.cuda.empty_cache()
            raise OutOfMemory(
                "The accelerator is out of memory; retry later or ask for a smaller image."
            ) from error
        except Exception as error:
            logger.exception("generation failed (seed %d)", parameters.seed)
            raise GenerationFailed(
                "Image generation failed; the server log has the details."
            ) from error
        generation_seconds().labels(model=self.model.tag).observe(finished - started)
        return Generation(output.images[0], parameters, started - queued, finished - started)

    @staticmethod
    def _call(run: Any, parameters: GenerationParameters) -> tuple[Any, float, float]:
        # Seeded on the CPU, so a seed gives the same noise whatever the device.
        generator = torch.Generator("cpu").manual_seed(parameters.seed)
        with torch.inference_mode():
            started = time.perf_counter()
            output = run(
                prompt=parameters.prompt,
                negative_prompt=parameters.negative_prompt,
                width=parameters.width,
                height=parameters.height,
                num_inference_steps=parameters.num_inference_steps,
                guidance_scale=parameters.guidance_scale,
                generator=generator,
            )
            return output, started, time.perf_counter()

    def generate_series(self, parameters: GenerationParameters, count: int) -> list[Generation]:
        """``count`` images with seeds ``seed``, ``seed + 1``, ...: each its own pipeline call,
        so each is exactly the image a single request with its seed gets."""
        return [
            self.generate(parameters.model_copy(update={"seed": parameters.seed + k}))
            for k in range(count)
        ]

    def warm_up(self, sizes: list[tuple[int, int]] | None = None) -> None:
        """One short generation per size (the native one by default), so the first clients do
        not pay for lazy initialisation or, with ``torch.compile``, for compiling their shape."""
        info = self.model.info
        for width, height in sizes or [(info.native_width, info.native_height)]:
            request = ImageRequest(
                prompt="warm-up", width=width, height=height, num_inference_steps=1, seed=0
            )
            self.generate(self.resolve(request))
