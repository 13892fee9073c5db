"""Turning requests into images with the real embedded pipeline; fakes only inject faults."""

from __future__ import annotations

import copy
import dataclasses
import inspect
from concurrent.futures import ThreadPoolExecutor
from typing import Any, get_args

import numpy as np
import pytest
import torch

from imagegen.engine.generation import PipelineRunner, plan_calls
from imagegen.engine.loading import LoadedModel
from imagegen.engine.progress import Tracker
from imagegen.engine.schedulers import SCHEDULER_NAMES, SCHEDULERS, build_scheduler
from imagegen.errors import GenerationFailed, InvalidField, OutOfMemory
from imagegen.hop import Failure, Generation
from imagegen.parameters import choose_model, resolve
from imagegen.schemas import (
    MAX_SEED,
    SCHEDULES,
    GenerationParameters,
    ImageRequest,
    ScheduleName,
    WorkItem,
)
from imagegen.work import EVALUATIONS_PER_STEP
from tests.conftest import loaded_recipe


def parameters(runner: PipelineRunner, **fields: Any) -> GenerationParameters:
    request = ImageRequest.model_validate({"prompt": "a red apple", **fields})
    return resolve(request, runner.model.info)


def work_items(batch: list[GenerationParameters], report: bool = False) -> list[WorkItem]:
    return [WorkItem(id=f"item-{k}", parameters=p, report=report) for k, p in enumerate(batch)]


def pixels(runner: PipelineRunner, **fields: Any) -> np.ndarray:
    return np.asarray(runner.generate(parameters(runner, **fields)).image)


def test_blank_fields_take_the_model_defaults(runner: PipelineRunner) -> None:
    info = runner.model.info
    parameters = resolve(ImageRequest(prompt="a cat"), runner.model.info)
    assert (parameters.width, parameters.height) == (info.native_width, info.native_height)
    assert parameters.num_inference_steps == info.default_steps
    assert parameters.guidance_scale == info.default_guidance_scale
    assert parameters.scheduler == info.default_scheduler
    assert parameters.model == runner.model.tag
    assert 0 <= parameters.seed <= MAX_SEED


def test_blank_seed_is_drawn_per_request(runner: PipelineRunner) -> None:
    seeds = {resolve(ImageRequest(prompt="a cat"), runner.model.info).seed for _ in range(5)}
    assert len(seeds) > 1


def test_given_fields_win_over_defaults(runner: PipelineRunner) -> None:
    request = ImageRequest(
        prompt="a cat", width=96, height=72, num_inference_steps=2, guidance_scale=0, seed=7
    )
    parameters = resolve(request, runner.model.info)
    assert (parameters.width, parameters.height, parameters.num_inference_steps) == (96, 72, 2)
    assert (parameters.guidance_scale, parameters.seed) == (0.0, 7)


def test_image_has_the_requested_size(runner: PipelineRunner) -> None:
    assert pixels(runner, width=96, height=72, seed=1).shape == (72, 96, 3)


def test_same_seed_gives_the_same_image(runner: PipelineRunner) -> None:
    assert np.array_equal(pixels(runner, seed=5), pixels(runner, seed=5))


def test_another_seed_gives_another_image(runner: PipelineRunner) -> None:
    assert not np.array_equal(pixels(runner, seed=5), pixels(runner, seed=6))


def test_the_prompt_changes_the_image(runner: PipelineRunner) -> None:
    assert not np.array_equal(pixels(runner, seed=5), pixels(runner, seed=5, prompt="a green pear"))


@pytest.mark.parametrize("scheduler", SCHEDULER_NAMES)
def test_every_scheduler_generates(runner: PipelineRunner, scheduler: str) -> None:
    if scheduler not in runner.model.info.schedulers:  # a flow-matching one: SD3's
        runner = PipelineRunner(loaded_recipe("sd3-tiny"))
    image = pixels(runner, seed=3, scheduler=scheduler)
    assert image.shape == (64, 64, 3)
    assert image.std() > 0


def test_the_schedule_table_is_what_each_scheduler_class_takes() -> None:
    options = {
        "karras": "use_karras_sigmas",
        "exponential": "use_exponential_sigmas",
        "beta": "use_beta_sigmas",
        "sgm_uniform": "timestep_spacing",
        "uniform": "timestep_spacing",
    }
    for name, (cls, _) in SCHEDULERS.items():
        takes = inspect.signature(cls.__init__).parameters
        assert SCHEDULES[name] == tuple(s for s, o in options.items() if o in takes), name


def test_the_work_rule_counts_each_schedulers_evaluations(runner: PipelineRunner) -> None:
    base = runner.model.pipeline.scheduler
    for name in SCHEDULERS:
        if name not in runner.model.info.schedulers:
            continue
        scheduler = build_scheduler(name, None, [0], base)
        scheduler.set_timesteps(10)
        per_step = EVALUATIONS_PER_STEP.get(name, 1)
        # Second-order schedulers interleave a midpoint per step but the last.
        assert len(scheduler.timesteps) in (10 * per_step - (per_step - 1), 10 + 1), name


@pytest.mark.parametrize("schedule", get_args(ScheduleName))
def test_a_schedule_changes_the_image(runner: PipelineRunner, schedule: str) -> None:
    plain = pixels(runner, seed=3, scheduler="dpm++", num_inference_steps=6)
    spaced = pixels(runner, seed=3, scheduler="dpm++", num_inference_steps=6, schedule=schedule)
    assert not np.array_equal(plain, spaced)


def test_a_schedule_the_sampler_lacks_is_refused_naming_those_it_takes(
    runner: PipelineRunner,
) -> None:
    with pytest.raises(InvalidField) as refused:
        parameters(runner, scheduler="euler_a", schedule="karras")
    assert refused.value.field == "schedule"
    assert "sgm_uniform, uniform" in refused.value.message


def test_dpm_sde_images_depend_on_their_own_seed_alone(tiny_model: LoadedModel) -> None:
    runner = PipelineRunner(tiny_model, max_batch_size=2)
    alone = runner.generate(parameters(runner, seed=8, scheduler="dpm++_sde")).image
    twice = runner.generate(parameters(runner, seed=8, scheduler="dpm++_sde")).image
    batch = [parameters(runner, seed=seed, scheduler="dpm++_sde") for seed in (7, 8)]
    together = runner.generate_batch(work_items(batch))
    assert np.array_equal(np.asarray(alone), np.asarray(twice))
    second = together[1]
    assert isinstance(second, Generation)
    assert np.abs(np.asarray(second.image, int) - np.asarray(alone, int)).max() <= 1


def test_clip_skip_one_changes_nothing_and_two_changes_the_image(runner: PipelineRunner) -> None:
    plain = pixels(runner, seed=4)
    assert np.array_equal(pixels(runner, seed=4, clip_skip=1), plain)
    assert not np.array_equal(pixels(runner, seed=4, clip_skip=2), plain)


def test_clip_skip_is_refused_for_flux() -> None:
    flux = PipelineRunner(loaded_recipe("flux-tiny"))
    with pytest.raises(InvalidField) as refused:
        parameters(flux, clip_skip=2)
    assert refused.value.field == "clip_skip"


def test_schedulers_change_the_image(runner: PipelineRunner) -> None:
    assert not np.array_equal(
        pixels(runner, seed=3, scheduler="euler_a"), pixels(runner, seed=3, scheduler="ddim")
    )


def test_a_request_scheduler_leaves_the_shared_pipeline_alone(
    runner: PipelineRunner,
) -> None:
    shared = runner.model.pipeline
    scheduler_before, config_before = shared.scheduler, dict(shared.config)
    pixels(runner, seed=3, scheduler="euler_a", guidance_scale=3.0)
    assert shared.scheduler is scheduler_before
    assert dict(shared.config) == config_before
    assert not hasattr(shared, "_guidance_scale")


def test_concurrent_requests_get_the_images_of_sequential_ones(
    runner: PipelineRunner,
) -> None:
    seeds = [1, 2, 3, 4]
    sequential = [pixels(runner, seed=seed) for seed in seeds]
    with ThreadPoolExecutor(max_workers=4) as pool:
        concurrent = list(pool.map(lambda seed: pixels(runner, seed=seed), seeds))
    assert all(np.array_equal(a, b) for a, b in zip(sequential, concurrent, strict=True))


def test_unknown_model_is_rejected_with_the_loaded_ones(runner: PipelineRunner) -> None:
    infos = [runner.model.info, loaded_recipe("sd3-tiny").info]
    with pytest.raises(InvalidField, match=f"{infos[0].tag}, {infos[1].tag}") as caught:
        choose_model("sdxl", infos)
    assert caught.value.field == "model"


@pytest.mark.parametrize("name", ["sd3-tiny", "full tag"])
def test_a_loaded_model_may_be_named(runner: PipelineRunner, name: str) -> None:
    infos = [runner.model.info, loaded_recipe("sd3-tiny").info]
    model = infos[1].tag if name == "full tag" else name
    chosen = choose_model(model, infos)
    assert resolve(ImageRequest(prompt="a cat", model=model), chosen).model == infos[1].tag


def test_a_blank_model_is_the_first_loaded(runner: PipelineRunner) -> None:
    infos = [runner.model.info, loaded_recipe("sd3-tiny").info]
    assert choose_model(None, infos) is infos[0]


def test_scheduler_the_model_does_not_accept_is_rejected_with_the_valid_ones(
    tiny_model: LoadedModel,
) -> None:
    info = tiny_model.info.model_copy(update={"schedulers": ["ddim", "pndm"]})
    with pytest.raises(InvalidField, match="ddim, pndm") as caught:
        resolve(ImageRequest(prompt="a cat", scheduler="euler"), info)
    assert caught.value.field == "scheduler"


class FailingPipeline:
    """Stands in for a pipeline whose call raises (at one width only, when given), to inject
    faults."""

    def __init__(self, real: Any, error: BaseException, width: int | None = None) -> None:
        self.real, self.scheduler = real, real.scheduler
        self.error, self.width = error, width

    def __call__(self, **call: Any) -> Any:
        if self.width in (None, call["width"]):
            raise self.error
        run = copy.copy(self.real)
        run.scheduler = self.scheduler
        return run(**call)


def failing_model(model: LoadedModel, failing: FailingPipeline) -> LoadedModel:
    """``model`` with its text-to-image pipeline replaced by ``failing``."""
    pipelines = {**model.pipelines, "text-to-image": failing}
    return dataclasses.replace(model, pipeline=failing, pipelines=pipelines)  # type: ignore[arg-type]


def test_out_of_memory_is_a_503_with_retry_after(
    tiny_model: LoadedModel,
) -> None:
    failing = PipelineRunner(
        failing_model(
            tiny_model, FailingPipeline(tiny_model.pipeline, torch.OutOfMemoryError("CUDA OOM"))
        )
    )
    with pytest.raises(OutOfMemory) as caught:
        failing.generate(resolve(ImageRequest(prompt="a cat"), failing.model.info))
    response = caught.value.to_response()
    assert response.status_code == 503
    assert int(response.headers["Retry-After"]) > 0
    assert b"CUDA OOM" not in response.body


def test_a_failure_inside_generation_is_a_500_without_internals(
    tiny_model: LoadedModel, caplog: pytest.LogCaptureFixture
) -> None:
    failing = PipelineRunner(
        failing_model(
            tiny_model, FailingPipeline(tiny_model.pipeline, RuntimeError("secret internals"))
        )
    )
    with pytest.raises(GenerationFailed) as caught:
        failing.generate(resolve(ImageRequest(prompt="a cat", seed=9), failing.model.info))
    response = caught.value.to_response()
    assert response.status_code == 500
    assert b"secret internals" not in response.body
    assert b"Traceback" not in response.body
    assert "secret internals" in caplog.text  # the log keeps the cause


@pytest.mark.parametrize(
    ("sizes", "calls"),
    [(None, [(64, 64, 1)]), ([(96, 64), (64, 128)], [(96, 64, 1), (64, 128, 1)])],
)
def test_warm_up_makes_one_short_generation_per_size(
    runner: PipelineRunner,
    monkeypatch: pytest.MonkeyPatch,
    sizes: list[tuple[int, int]] | None,
    calls: list[tuple[int, int, int]],
) -> None:
    made: list[tuple[int, int, int]] = []
    real_call = runner._call

    def recording_call(
        run: Any, group: list[GenerationParameters], arguments: dict[str, Any], watch: Any
    ) -> Any:
        made.extend((p.width, p.height, p.num_inference_steps) for p in group)
        return real_call(run, group, arguments, watch)

    monkeypatch.setattr(runner, "_call", recording_call)
    runner.warm_up(sizes)
    assert made == calls  # the native size by default


def test_calls_group_matching_shapes_in_order_up_to_the_batch_size(
    runner: PipelineRunner,
) -> None:
    batch = [
        parameters(runner, seed=0),
        parameters(runner, seed=1, width=96),
        parameters(runner, seed=2, prompt="a pear", negative_prompt="a bowl"),
        parameters(runner, seed=3, guidance_scale=3.0),
        parameters(runner, seed=4),
        parameters(runner, seed=5, scheduler="ddim"),
        parameters(runner, seed=6),
    ]
    # Prompts and seeds may differ inside a call; size, guidance scale and scheduler may not.
    assert plan_calls(batch, max_batch_size=8) == [[0, 2, 4, 6], [1], [3], [5]]
    assert plan_calls(batch, max_batch_size=3) == [[0, 2, 4], [6], [1], [3], [5]]
    assert plan_calls(batch, max_batch_size=1) == [[0], [2], [4], [6], [1], [3], [5]]


def test_a_batched_image_matches_its_unbatched_image_within_one_level(
    tiny_model: LoadedModel,
) -> None:
    batching = PipelineRunner(tiny_model, max_batch_size=8)
    batch = [parameters(batching, seed=seed, prompt=f"a red apple {seed}") for seed in range(4)]
    outcomes = batching.generate_batch(work_items(batch))
    assert all(isinstance(o, Generation) and o.batch_size == 4 for o in outcomes)
    batched = [np.asarray(o.image, dtype=int) for o in outcomes if isinstance(o, Generation)]
    alone = [np.asarray(batching.generate(p).image, dtype=int) for p in batch]
    for one, other in zip(batched, alone, strict=True):
        assert np.abs(one - other).max() <= 1  # 1/255 per pixel
    assert len({image.tobytes() for image in batched}) == 4  # each kept its own seed


def test_batch_size_one_gives_exactly_the_single_images(tiny_model: LoadedModel) -> None:
    unbatched = PipelineRunner(tiny_model, max_batch_size=1)
    batch = [parameters(unbatched, seed=seed) for seed in range(3)]
    outcomes = unbatched.generate_batch(work_items(batch))
    for outcome, item in zip(outcomes, batch, strict=True):
        assert isinstance(outcome, Generation) and outcome.batch_size == 1
        assert outcome.image.tobytes() == unbatched.generate(item).image.tobytes()


def test_a_mixed_batch_answers_every_item_in_its_order(tiny_model: LoadedModel) -> None:
    batching = PipelineRunner(tiny_model, max_batch_size=8)
    batch = [parameters(batching, seed=1, width=96), parameters(batching, seed=2)]
    batch.append(parameters(batching, seed=3, width=96))
    outcomes = batching.generate_batch(work_items(batch))
    assert [o.parameters for o in outcomes if isinstance(o, Generation)] == batch
    assert [o.image.size for o in outcomes if isinstance(o, Generation)] == [
        (96, 64),
        (64, 64),
        (96, 64),
    ]


def test_a_failed_call_fails_only_its_own_items(tiny_model: LoadedModel) -> None:
    oom = torch.OutOfMemoryError("CUDA OOM")
    failing_wide = FailingPipeline(tiny_model.pipeline, oom, width=96)
    batching = PipelineRunner(failing_model(tiny_model, failing_wide), max_batch_size=8)
    batch = [parameters(batching, seed=1, width=96), parameters(batching, seed=2)]
    failed, made = batching.generate_batch(work_items(batch))
    assert isinstance(failed, Failure) and isinstance(failed.exception(), OutOfMemory)
    assert isinstance(made, Generation) and made.image.size == (64, 64)


LONG_PROMPT = "a lighthouse on a cliff at sunset, " * 4  # about 140 characters


@pytest.mark.parametrize("field", ["prompt", "negative_prompt"])
def test_a_prompt_longer_than_the_text_encoder_reads_is_refused_alone(
    runner: PipelineRunner, field: str
) -> None:
    long = parameters(runner, seed=1, **{field: LONG_PROMPT})
    fine = parameters(runner, seed=2, prompt="a" * 70)  # bytes merge into fewer tokens
    refused, made = runner.generate_batch(work_items([long, fine]))
    assert isinstance(made, Generation)
    assert isinstance(refused, Failure)
    error = refused.exception()
    assert isinstance(error, InvalidField) and error.status_code == 400
    assert error.field == field
    assert f"`{field}` must be at most 77 tokens for sd-tiny" in error.message


def test_counting_a_prompt_leaves_the_pipelines_tokenizer_as_it_is(runner: PipelineRunner) -> None:
    """A fast tokenizer keeps its padding on itself, set at each call: counting a request's
    tokens (on a caller's thread) with the pipeline's own, while the pipeline thread was
    between setting padding and encoding, turned that prompt's padding off, and its image
    changed (seen as a 1-in-8 flake of the LoRA concurrency test). The pipeline's tokenizer,
    padded as the pipeline pads it, stays so while requests are counted."""
    tokenizer = runner.model.pipeline.tokenizer
    tokenizer._tokenizer.enable_padding(length=tokenizer.model_max_length)
    try:
        runner.check_prompts(parameters(runner, seed=1, negative_prompt="blurry"))
        assert tokenizer._tokenizer.padding is not None
    finally:
        tokenizer._tokenizer.no_padding()


class CancellingAtStep(Tracker):
    """A tracker that cancels ``victims`` when the pipeline reports ``step``, as a client's
    cancel arriving mid-call would; it records every step event."""

    def __init__(self, victims: set[str], step: int = 1) -> None:
        super().__init__()
        self.victims, self.at_step = victims, step
        self.events: list[dict[str, Any]] = []

    def publish(self, events: Any) -> None:
        events = list(events)
        self.events += events
        if any(event.get("step") == self.at_step for event in events):
            self.cancel(self.victims)
        super().publish(events)


def test_an_image_cancelled_mid_call_is_cancelled_and_its_partner_finishes_unchanged(
    tiny_model: LoadedModel,
) -> None:
    batch = work_items(
        [
            parameters(PipelineRunner(tiny_model), seed=seed, num_inference_steps=6)
            for seed in (1, 2)
        ],
        report=True,
    )
    untouched = PipelineRunner(tiny_model, max_batch_size=8).generate_batch(batch)
    tracker = CancellingAtStep({batch[0].id})
    cancelled, finished = PipelineRunner(tiny_model, 8, tracker).generate_batch(batch)
    assert isinstance(cancelled, Failure) and cancelled.error == "Cancelled"
    assert isinstance(finished, Generation) and isinstance(untouched[1], Generation)
    assert finished.image.tobytes() == untouched[1].image.tobytes()


def test_a_call_whose_images_are_all_cancelled_stops_at_the_next_step(
    tiny_model: LoadedModel,
) -> None:
    batch = work_items(
        [parameters(PipelineRunner(tiny_model), seed=3, num_inference_steps=20)], report=True
    )
    tracker = CancellingAtStep({batch[0].id}, step=2)
    (outcome,) = PipelineRunner(tiny_model, 8, tracker).generate_batch(batch)
    assert isinstance(outcome, Failure) and outcome.error == "Cancelled"
    steps = [event["step"] for event in tracker.events if "step" in event]
    assert max(steps) == 2  # cancelled at step 2; no step after it ran


def test_a_cancelled_image_that_has_not_started_never_runs(
    tiny_model: LoadedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    runner = PipelineRunner(tiny_model, max_batch_size=8)
    batch = work_items([parameters(runner, seed=4), parameters(runner, seed=5)])
    runner.tracker.cancel([item.id for item in batch])
    calls: list[Any] = []
    monkeypatch.setattr(runner, "_call", lambda *args: calls.append(args))
    outcomes = runner.generate_batch(batch)
    assert [o.error for o in outcomes if isinstance(o, Failure)] == ["Cancelled", "Cancelled"]
    assert calls == []
