"""Turn generation parameters into images with one loaded pipeline: images that can share a
pipeline call share one, and nothing leaks between concurrent requests."""

from __future__ import annotations

import base64
import copy
import inspect
import io
import logging
import threading
import time
import uuid
from collections.abc import Sequence
from contextvars import copy_context
from dataclasses import replace
from functools import cache, cached_property, partial
from typing import Any

import bentoml
import PIL.Image
import prometheus_client
import torch
from prometheus_client import Histogram

from imagegen.engine.caching import step_cache
from imagegen.engine.compute import Lane
from imagegen.engine.controlling import ControlNets
from imagegen.engine.loading import LoadedModel, load_model
from imagegen.engine.modes import ModeCall, Start, mode_call, second_pass_call
from imagegen.engine.progress import Tracker
from imagegen.engine.schedulers import build_scheduler
from imagegen.engine.upscaling import UpscaleCancelled, Upscalers
from imagegen.errors import Cancelled, GenerationFailed, InvalidField, OutOfMemory
from imagegen.hop import Event, Failure, Generation
from imagegen.parameters import resolve
from imagegen.schemas import GenerationParameters, HiresParameters, ImageRequest, WorkItem
from imagegen.settings import Settings
from imagegen.upscalers import LATENT_UPSCALERS

logger = logging.getLogger(__name__)


@cache
def per_model(name: str, documentation: str, buckets: tuple[float, ...]) -> Histogram:
    # Created on first use, not at import: BentoML points prometheus_client at its
    # multiprocess directory only after the service module is imported.
    return Histogram(name, documentation, labelnames=["model"], buckets=buckets)


def generation_seconds() -> Histogram:
    return per_model(
        "imagegen_generation_seconds",
        "Time of one pipeline call, which makes the images of one batch.",
        (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160),
    )


def batch_sizes() -> Histogram:
    return per_model(
        "imagegen_batch_size",
        "Images made by one pipeline call: requests batched together share one.",
        (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64),
    )


@cache
def cancelled_images() -> prometheus_client.Counter:
    return prometheus_client.Counter(
        "imagegen_cancelled_images",
        "Images cancelled before or during their pipeline call (client gone, timeout, "
        "DELETE /jobs/{id}).",
        labelnames=["model"],
    )


BatchKey = tuple[
    str,
    int,
    int,
    int,
    float,
    str,
    str | None,
    int,
    str,
    float | None,
    tuple[tuple[str, float], ...],
    str | None,
    bool,
    tuple[tuple[str, float, float, float, str], ...],
]


def batch_key(parameters: GenerationParameters) -> BatchKey:
    """What the images of one pipeline call share: diffusers takes one size, step count,
    scheduler and schedule, guidance scale (the exact scale, not only guidance on or off),
    CLIP skip, mode and strength per call, and the adapters set on the pipeline apply to all
    its images, as do its ControlNets with their scales, spans and control images (diffusers'
    Multi-ControlNet takes one map per ControlNet for the whole call); prompts, negative
    prompts, seeds, images and masks are per image. Hires fix's second pass is one call
    for the images of the first, so its settings are shared too."""
    p = parameters
    return (
        p.model,
        p.width,
        p.height,
        p.num_inference_steps,
        p.guidance_scale,
        p.scheduler,
        p.schedule,
        p.clip_skip,
        p.mode,
        p.strength,
        tuple((lora.name, lora.scale) for lora in p.loras),
        p.hires.model_dump_json() if p.hires else None,
        p.cache,
        tuple((c.name, c.scale, c.start, c.end, c.image_sha256) for c in p.controlnets),
    )


# Latent channels to RGB, a linear fit for SD 1.x/2.x VAEs' 4-channel latents (the
# approximation AUTOMATIC1111 and ComfyUI use for cheap previews): no VAE decode per step.
LATENT_RGB = torch.tensor(
    [
        [0.3512, 0.2297, 0.3227],
        [0.3250, 0.4974, 0.2350],
        [-0.2829, 0.1762, 0.2721],
        [-0.2120, -0.2616, -0.7177],
    ]
)


def preview_png(latents: torch.Tensor) -> str | None:
    """One image's latents (C, h, w) as a small base64 PNG (h x w, an eighth of the image's
    size), or None for latents this approximation does not know (FLUX.1's are packed)."""
    if latents.ndim != 3 or latents.shape[0] != LATENT_RGB.shape[0]:
        return None
    rgb = torch.einsum("chw,cr->hwr", latents.float().cpu(), LATENT_RGB)
    pixels = ((rgb + 1) * 127.5).clamp(0, 255).to(torch.uint8).numpy()
    buffer = io.BytesIO()
    PIL.Image.fromarray(pixels).save(buffer, format="PNG", compress_level=1)
    return base64.b64encode(buffer.getvalue()).decode()


class Interrupted(Exception):
    """Raised from the step callback when every image of a call is cancelled: the pipeline
    returns at once, skipping the remaining steps and the VAE decode."""


def plan_calls(batch: Sequence[GenerationParameters], max_batch_size: int) -> list[list[int]]:
    """Indices into ``batch`` for each pipeline call: items with the same key, in order, at
    most ``max_batch_size`` per call."""
    groups: dict[BatchKey, list[int]] = {}
    for index, parameters in enumerate(batch):
        groups.setdefault(batch_key(parameters), []).append(index)
    return [
        indices[start : start + max_batch_size]
        for indices in groups.values()
        for start in range(0, len(indices), max_batch_size)
    ]


class StepWatch:
    """diffusers' ``callback_on_step_end`` for one call: publishes every image's step (with a
    preview where asked) and interrupts the call once all its images are cancelled. The flag
    must be raised here: diffusers resets its own interrupt flag at the start of each call."""

    def __init__(
        self, tracker: Tracker, items: list[WorkItem], loops: int, *, after: int = 0, more: int = 0
    ) -> None:
        self.tracker = tracker
        self.items = items
        self.loops = loops  # the call's, until the pipeline says (PNDM adds one, Heun doubles)
        # Hires fix counts both passes as one run of steps: `after` the first pass's, and
        # `more` (the second's, estimated) to come.
        self.after, self.more = after, more
        self.current_pass = 2 if after else 1
        self.reported = any(item.report for item in items)
        self.stepped: float | None = None  # perf_counter at the end of the latest step

    def begin(self) -> None:
        """Step 0: the call has started."""
        if self.reported:
            self.tracker.publish(self._events(0, None))

    def __call__(self, pipe: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> Any:
        self.loops = getattr(pipe, "num_timesteps", None) or self.loops
        self.stepped = time.perf_counter()
        if self.reported:
            self.tracker.publish(self._events(step + 1, tensors.get("latents")))
        self.check()
        return tensors

    def check(self) -> None:
        """Stop the call once all its images are cancelled."""
        if self.cancelled():
            raise Interrupted()

    def cancelled(self) -> bool:
        return all(self.tracker.is_cancelled(item.id) for item in self.items)

    def _events(self, step: int, latents: torch.Tensor | None) -> list[Event]:
        at = time.time()
        return [
            {
                "id": item.id,
                "step": self.after + step,
                "steps": self.after + self.loops + self.more,
                "current_pass": self.current_pass,
                "images": len(self.items),
                "at": at,
                "preview": (
                    preview_png(latents[index]) if item.preview and latents is not None else None
                ),
            }
            for index, item in enumerate(self.items)
            if item.report
        ]


def prompt_limit(model: LoadedModel) -> tuple[Any, int] | None:
    """A tokenizer to count a prompt's tokens with, and how many the model reads (None when
    its family names no tokenizer). The tokenizer is a copy of the pipeline's: a fast
    tokenizer sets its padding and truncation on itself at each call, so counting with the
    pipeline's own while the pipeline thread encodes a prompt can turn that prompt's padding
    off under it, and its image changes."""
    pipeline = model.pipeline
    tokenizer = getattr(pipeline, model.family.prompt_tokenizer, None)
    if tokenizer is None:
        return None
    sequence = inspect.signature(pipeline.__call__).parameters.get("max_sequence_length")
    limit = sequence.default if sequence is not None else tokenizer.model_max_length
    return copy.deepcopy(tokenizer), limit


class PipelineRunner:
    """Runs one loaded pipeline.

    Every pipeline call, the warm-up included, runs in one lane of its own
    (:mod:`imagegen.engine.compute`). That serialises calls per model (one call already keeps
    the device busy) and keeps torch's CPU kernels on one OpenMP thread team while it works:
    a second team on the same cores makes both 2-3x slower on two cores, even idle. Each
    call also gets its own scheduler and
    one seeded generator per image, so nothing per-request is written onto the shared pipeline
    and every image keeps its own seed inside a batch.
    """

    def __init__(
        self,
        model: LoadedModel,
        max_batch_size: int = 1,
        tracker: Tracker | None = None,
        upscalers: Upscalers | None = None,
        controlnets: ControlNets | None = None,
    ) -> None:
        self.upscalers = upscalers or Upscalers([], str(model.info.device))
        self.controls = (controlnets or ControlNets([], "cpu", "float32")).for_model(model)
        # This runner's view of the model: what its hires fix and controls may name (the
        # loaded model, shared by other runners in tests and benchmarks, is left as it is).
        seen = {
            "upscalers": self.upscalers.names(model),
            "controlnets": self.controls.infos,
            "control_modes": self.controls.modes,
        }
        self.model = replace(model, info=model.info.model_copy(update=seen))
        self.max_batch_size = max_batch_size
        self.tracker = tracker or Tracker()
        self.lane = Lane("pipeline")
        self._prompt_limit = prompt_limit(model)
        self._counting = threading.Lock()

    def generate(self, parameters: GenerationParameters) -> Generation:
        """One image, alone in its pipeline call."""
        (outcome,) = self.generate_batch([WorkItem(id=uuid.uuid4().hex, parameters=parameters)])
        if isinstance(outcome, Failure):
            raise outcome.exception()
        return outcome

    def generate_batch(self, batch: Sequence[WorkItem]) -> list[Generation | Failure]:
        """One outcome per item, in order. Items that share a :func:`batch_key` run as one
        pipeline call (up to ``max_batch_size``); a failed call fails only its own items. An
        item cancelled before its call starts never runs."""
        received = time.perf_counter()
        outcomes: dict[int, Generation | Failure] = {}
        for index, item in enumerate(batch):
            try:
                self.check_prompts(item.parameters)
            except InvalidField as error:
                outcomes[index] = Failure.of(error)
        runnable = [index for index in range(len(batch)) if index not in outcomes]
        planned_calls = plan_calls(
            [batch[index].parameters for index in runnable], self.max_batch_size
        )
        for planned in planned_calls:
            indices = [runnable[position] for position in planned]
            for index in indices:
                if self.tracker.is_cancelled(batch[index].id):
                    outcomes[index] = Failure.of(Cancelled("The generation was cancelled."))
            indices = [index for index in indices if index not in outcomes]
            if not indices:
                continue
            group = [batch[index] for index in indices]
            try:
                made: Sequence[Generation | Failure] = self._generate_together(group, received)
            except (OutOfMemory, GenerationFailed, Cancelled) as error:
                made = [Failure.of(error)] * len(group)
            outcomes.update(zip(indices, made, strict=True))
        answered = [outcomes[index] for index in range(len(batch))]
        cancelled = sum(isinstance(o, Failure) and o.error == "Cancelled" for o in answered)
        if cancelled:
            cancelled_images().labels(model=self.model.tag).inc(cancelled)
        return answered

    def check_prompts(self, parameters: GenerationParameters) -> None:
        """A text encoder reads a fixed number of tokens and drops the rest without a word; a
        prompt longer than what the family's longest reader takes (CLIP's 77 tokens, or the
        pipeline's T5 sequence length) is refused, naming the limit, rather than silently
        cut."""
        if self._prompt_limit is None:
            return
        counter, limit = self._prompt_limit
        for field in ("prompt", "negative_prompt"):
            with self._counting:
                tokens = len(counter(getattr(parameters, field)).input_ids)
            if tokens > limit:
                raise InvalidField(
                    f"`{field}` must be at most {limit} tokens for {self.model.info.name} "
                    f"(what its text encoder reads), but is {tokens} tokens.",
                    field=field,
                )

    def _generate_together(
        self, items: list[WorkItem], received: float
    ) -> list[Generation | Failure]:
        """One pipeline call for images that share a batch key (two with hires fix), asked
        for at ``received``; an image cancelled during the call is a Cancelled failure, and
        the call stops once all of them are."""
        group = [item.parameters for item in items]
        first = group[0]
        # The request's context (its id, for log lines) goes along to the runner thread.
        call = self.lane.submit(partial(copy_context().run, self._run, items))
        try:
            images, (started, denoised, finished) = call.result()
        except Interrupted:
            raise Cancelled("The generation was cancelled.") from None
        except torch.OutOfMemoryError as error:
            logger.warning(
                "out of device memory: %d images at %dx%d", len(group), first.width, first.height
            )
            torch.cuda.empty_cache()
            raise OutOfMemory(
                "The accelerator is out of memory; retry later or ask for a smaller image."
            ) from error
        except Exception as error:
            logger.exception("generation failed (seeds %s)", [p.seed for p in group])
            raise GenerationFailed() from error
        call_seconds, call_size = self._call_metrics
        call_seconds.observe(finished - started)
        call_size.observe(len(group))
        return [
            Failure.of(Cancelled("The generation was cancelled."))
            if self.tracker.is_cancelled(item.id)
            else Generation(
                image=image,
                parameters=item.parameters,
                received=received,
                started=started,
                denoised=denoised,
                finished=finished,
                batch_size=len(group),
            )
            for image, item in zip(images, items, strict=True)
        ]

    @cached_property
    def _call_metrics(self) -> tuple[Any, Any]:
        """This model's histograms of a call's time and size, labelled once: ``labels`` costs
        more than the ``observe`` after it, on the way from the call's end to its answer."""
        tag = self.model.tag
        return generation_seconds().labels(model=tag), batch_sizes().labels(model=tag)

    def _run(self, items: list[WorkItem]) -> tuple[list[Any], tuple[float, float, float]]:
        """On the pipeline's thread: the group's adapters set, its call, and hires fix's
        upscale and second call. Timed: the first call's start, the last step's end, the
        last call's end."""
        group = [item.parameters for item in items]
        first = group[0]
        self.model.adapters.activate(first.loras)
        controlled = self.controls.pipelines if first.controlnets else None
        plan = self._guided(mode_call(self.model, items, controlled), items, group)
        second = [p.second_pass() for p in group]
        more = second[0].denoising_steps if second[0] else 0
        watch = StepWatch(self.tracker, items, first.denoising_steps, more=more)
        run = self._copy(plan, group)
        output, started, finished = self._call(run, group, plan.arguments, watch)
        if first.hires is None:
            return plan.finish(output.images), (started, watch.stepped or started, finished)
        hires = [p for p in second if p is not None]
        start = self._upscaled(output.images, first.hires, watch)
        plan = self._guided(second_pass_call(self.model, hires, start, controlled), items, hires)
        watch = StepWatch(self.tracker, items, hires[0].denoising_steps, after=watch.loops)
        run = self._copy(plan, hires)
        output, _, finished = self._call(run, hires, plan.arguments, watch)
        return output.images, (started, watch.stepped or started, finished)

    def _guided(
        self, plan: ModeCall, items: list[WorkItem], group: list[GenerationParameters]
    ) -> ModeCall:
        """``plan`` with the group's ControlNets, their maps at its size among its arguments."""
        first = group[0]
        if not first.controlnets:
            return plan
        size = (first.width, first.height)
        guiding = self.controls.arguments(first.mode, items, first.controlnets, size)
        return replace(
            plan,
            arguments={**plan.arguments, **guiding},
            controlnet=self.controls.network(first.controlnets),
        )

    def _copy(self, plan: ModeCall, group: list[GenerationParameters]) -> Any:
        """The pipeline for one call: __call__ writes per-call state onto the pipeline
        (guidance, step counts), so each call runs on its own shallow copy with its own
        scheduler and ControlNets: the weights are shared, the state is not."""
        pipeline = plan.pipeline
        first = group[0]
        scheduler = (
            # The model's own scheduler, outside the registry maybe: a copy of the pipeline's,
            # which never steps itself, is a fresh one (from its config took 6x longer).
            copy.deepcopy(pipeline.scheduler)
            if first.scheduler == self.model.info.default_scheduler and first.schedule is None
            else build_scheduler(
                first.scheduler, first.schedule, [p.seed for p in group], pipeline.scheduler
            )
        )
        run = copy.copy(pipeline)
        run.scheduler = scheduler
        if plan.controlnet is not None:
            run.controlnet = plan.controlnet
        return run

    def _upscaled(self, made: Any, hires: HiresParameters, watch: StepWatch) -> Start:
        """The first pass's images (or latents) at the second pass's size."""
        if hires.upscaler in LATENT_UPSCALERS:
            scale = self.model.pipeline.vae_scale_factor
            size = (hires.height // scale, hires.width // scale)
            return self.upscalers.latents(made, size, hires.upscaler)
        size = (hires.width, hires.height)
        try:
            return [self.upscalers.image(i, size, hires.upscaler, watch.cancelled) for i in made]
        except UpscaleCancelled:
            raise Interrupted() from None

    def _call(
        self,
        run: Any,
        group: list[GenerationParameters],
        arguments: dict[str, Any],
        watch: StepWatch | None = None,
    ) -> tuple[Any, float, float]:
        first = group[0]
        # Seeded on the CPU, so a seed gives the same noise whatever the device; one generator
        # per image, so an image's noise does not depend on what it is batched with.
        generators = [torch.Generator("cpu").manual_seed(p.seed) for p in group]
        cached = self.model.info.step_cache if first.cache else None
        with torch.inference_mode(), step_cache(run, cached):
            if watch is not None:
                watch.begin()
            started = time.perf_counter()
            output = run(
                prompt=[p.prompt for p in group],
                num_inference_steps=first.num_inference_steps,
                guidance_scale=first.guidance_scale,
                generator=generators,
                callback_on_step_end=watch,
                **arguments,
            )
            return output, started, time.perf_counter()

    def warm_up(self, sizes: list[tuple[int, int]] | None = None) -> None:
        """One short generation per size (the native one by default), so the first clients do
        not pay for lazy initialisation or, with ``torch.compile``, for compiling their shape."""
        info = self.model.info
        for width, height in sizes or [(info.native_width, info.native_height)]:
            request = ImageRequest(
                prompt="warm-up", width=width, height=height, num_inference_steps=1, seed=0
            )
            self.generate(resolve(request, info))


def load_runners(
    stored: list[bentoml.Model],
    settings: Settings,
    tracker: Tracker,
    adapters: Sequence[bentoml.Model] = (),
    upscalers: Upscalers | None = None,
    controlnets: ControlNets | None = None,
) -> dict[str, PipelineRunner]:
    """A runner per model, by name, each loaded with its stored adapters and then warmed up
    when ``settings`` say so; they report to one ``tracker`` and share the ``upscalers`` and
    ``controlnets``."""
    runners = {}
    for model in stored:
        own = [a for a in adapters if a.info.metadata["base"] == model.tag.name]
        loaded = load_model(model, settings, own)
        runner = PipelineRunner(loaded, settings.max_batch_size, tracker, upscalers, controlnets)
        if settings.warmup:
            runner.warm_up(settings.warmup_shapes)
        runners[model.tag.name] = runner
    return runners
