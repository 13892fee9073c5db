"""Upscalers and hires fix in-process: the store's import and detection (spandrel), tiling,
the second pass on the same weights, its batching, progress and cancellation, and the work
each adds. Over real HTTP: tests/test_hires_e2e.py."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import bentoml
import numpy as np
import PIL.Image
import pytest
import torch
from safetensors.torch import load_file, save_file

from imagegen.engine.generation import PipelineRunner
from imagegen.engine.loading import LoadedModel
from imagegen.engine.progress import Tracker
from imagegen.engine.upscaling import UpscaleCancelled, Upscalers, tiled
from imagegen.errors import InvalidField
from imagegen.hop import Failure, Generation, UpscaleItem
from imagegen.inputs import pack
from imagegen.parameters import resolve
from imagegen.schemas import GenerationParameters, ImageRequest, WorkItem
from imagegen.upscalers import LATENT_UPSCALERS, MODEL_UPSCALE_WORK, PIXEL_UPSCALERS
from imagegen.work import image_work, steps_within
from models.__main__ import main
from models.upscalers import (
    ESRGAN_TINY_X2,
    ESRGAN_TINY_X4,
    BadUpscaler,
    ensure_upscaler,
    import_upscaler,
    load_upscaler,
)
from tests.conftest import loaded_recipe

X4, X2 = ESRGAN_TINY_X4, ESRGAN_TINY_X2


@pytest.fixture(scope="module")
def upscalers() -> Upscalers:
    return Upscalers([ensure_upscaler(X4), ensure_upscaler(X2)], "cpu")


@pytest.fixture(scope="module")
def hires_runner(tiny_model: LoadedModel, upscalers: Upscalers) -> PipelineRunner:
    return PipelineRunner(tiny_model, max_batch_size=8, upscalers=upscalers)


def hires(
    runner: PipelineRunner, upscaler: str = "Latent", **fields: object
) -> GenerationParameters:
    request = ImageRequest.model_validate(
        {
            "prompt": "a cat",
            "width": 64,
            "height": 64,
            "num_inference_steps": 4,
            "seed": 1,
            "hires": {"upscaler": upscaler, **fields},
        }
    )
    return resolve(request, runner.model.info)


def test_the_cli_imports_a_pth_and_spandrel_names_its_architecture_and_scale(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    built = tmp_path / "net.safetensors"
    X2.build(built)
    pth = tmp_path / "RealESRGAN_x2.pth"
    torch.save({"params_ema": load_file(built)}, pth)  # BasicSR's checkpoint layout
    main(["import-upscaler", str(pth), "--name", "my-x2"])
    tag = capsys.readouterr().out.strip()
    assert tag.startswith("my-x2:")
    stored = bentoml.models.get(tag)
    assert stored.info.labels == {"kind": "upscaler"}
    assert (stored.info.metadata["architecture"], stored.info.metadata["scale"]) == ("ESRGAN", 2)


def test_a_file_that_is_no_upscaler_is_refused_at_import(tmp_path: Path) -> None:
    lora = tmp_path / "lora.safetensors"
    save_file({"lora_unet_down.weight": torch.zeros(4, 8)}, str(lora))
    with pytest.raises(BadUpscaler, match="not an upscaler spandrel knows"):
        import_upscaler(lora, "nope")
    with pytest.raises(SystemExit, match="not an upscaler"):
        main(["import-upscaler", str(lora), "--name", "nope"])


def test_a_stored_upscaler_makes_the_asked_size_in_tiles_as_it_would_whole(
    upscalers: Upscalers,
) -> None:
    network = load_upscaler(ensure_upscaler(X2))
    pixels = torch.rand(1, 3, 300, 520)  # more than one tile each way
    with torch.inference_mode():
        whole = network(pixels)
        pieces = tiled(network, pixels, lambda: False)
    assert pieces.shape == whole.shape == (1, 3, 600, 1040)
    assert (pieces - whole).abs().max() < 1 / 255
    image = PIL.Image.new("RGB", (40, 30), (200, 30, 30))
    # x4 once (160x120), then Lanczos down to the asked size; x2 twice (160x120) likewise.
    assert upscalers.image(image, (150, 100), X4.name).size == (150, 100)
    assert upscalers.image(image, (150, 100), X2.name).size == (150, 100)


def test_an_upscale_stops_between_tiles_once_cancelled(upscalers: Upscalers) -> None:
    """Alone, it answers its input unchanged (its caller has gone; nothing is raised to be
    logged as an error); in hires fix, the call is interrupted like a cancelled step."""
    tracker = Tracker()
    tracker.cancel(["gone"])
    item = UpscaleItem(
        id="gone", image=pack(PIL.Image.new("RGB", (64, 64))), width=256, height=256,
        upscaler=X4.name,
    )  # fmt: skip
    assert upscalers.submit(item, tracker).result().size == (64, 64)
    with pytest.raises(UpscaleCancelled):
        upscalers.image(PIL.Image.new("RGB", (64, 64)), (256, 256), X4.name, lambda: True)


def test_a_cancel_during_hires_fix_s_network_upscale_is_a_cancel_not_a_failure(
    tiny_model: LoadedModel, upscalers: Upscalers, monkeypatch: pytest.MonkeyPatch
) -> None:
    tracker = Tracker()
    runner = PipelineRunner(tiny_model, tracker=tracker, upscalers=upscalers)
    upscale = upscalers.image

    def cancelled_on_the_way(*args: Any, **kwargs: Any) -> PIL.Image.Image:
        tracker.cancel(["a"])  # between the first pass and the network's first tile
        return upscale(*args, **kwargs)

    monkeypatch.setattr(upscalers, "image", cancelled_on_the_way)
    parameters = hires(runner, X4.name, scale=2)
    (outcome,) = runner.generate_batch([WorkItem(id="a", parameters=parameters)])
    assert isinstance(outcome, Failure) and outcome.error == "Cancelled"


@pytest.mark.parametrize("upscaler", [*PIXEL_UPSCALERS, *LATENT_UPSCALERS, X4.name, X2.name])
def test_hires_fix_makes_the_larger_size_with_every_upscaler(
    hires_runner: PipelineRunner, upscaler: str
) -> None:
    parameters = hires(hires_runner, upscaler, scale=1.5)
    generated = hires_runner.generate(parameters)
    assert generated.image.size == (96, 96)
    assert generated.parameters.hires is not None
    assert generated.parameters.hires.upscaler == upscaler


def test_hires_fix_redraws_what_a_plain_resize_would_not(hires_runner: PipelineRunner) -> None:
    first = hires_runner.generate(hires(hires_runner).model_copy(update={"hires": None}))
    fixed = hires_runner.generate(hires(hires_runner, "Lanczos"))
    resized = first.image.resize((128, 128), PIL.Image.Resampling.LANCZOS)
    difference = np.abs(np.asarray(fixed.image, float) - np.asarray(resized, float)).mean()
    assert difference > 5, difference


def test_sizes_follow_scale_or_the_given_side_in_multiples_of_8(
    hires_runner: PipelineRunner,
) -> None:
    third = hires(hires_runner, scale=1.3).hires
    assert third is not None and (third.width, third.height) == (80, 80)  # 83.2 rounded down
    wide = resolve(
        ImageRequest(prompt="a", width=96, height=64, hires={"width": 200}),
        hires_runner.model.info,
    ).hires
    assert wide is not None and (wide.width, wide.height) == (200, 128)  # 133 rounded down
    with pytest.raises(InvalidField, match="between 64 and 2048") as error:
        too_large = ImageRequest(prompt="a", width=1024, height=1024, hires={"scale": 3})
        resolve(too_large, hires_runner.model.info)
    assert error.value.field == "hires"


def test_an_unknown_upscaler_names_the_field_and_the_served_ones(
    hires_runner: PipelineRunner,
) -> None:
    with pytest.raises(InvalidField) as error:
        hires(hires_runner, "4x-UltraSharp")
    assert error.value.field == "hires.upscaler"
    assert "Latent (nearest-exact)" in error.value.message
    assert X4.name in error.value.message and "'4x-UltraSharp'" in error.value.message


def test_flux_offers_no_latent_upscaler(upscalers: Upscalers) -> None:
    flux = PipelineRunner(loaded_recipe("flux-tiny"), upscalers=upscalers)
    assert "Lanczos" in flux.model.info.upscalers
    assert not set(LATENT_UPSCALERS) & set(flux.model.info.upscalers)


def test_work_counts_both_passes_and_the_network(hires_runner: PipelineRunner) -> None:
    latent = hires(hires_runner, steps=10, strength=0.5)
    first = latent.model_copy(update={"hires": None})
    second = latent.second_pass()
    assert second is not None and second.denoising_steps == 5
    assert image_work(latent) == pytest.approx(image_work(first) + image_work(second))
    network = hires(hires_runner, X4.name, steps=10, strength=0.5)
    extra = MODEL_UPSCALE_WORK * 128 * 128 / 1e6
    assert image_work(network) == pytest.approx(image_work(latent) + extra)
    # The over-budget sentence's "steps that fit" counts the second pass as fixed.
    assert steps_within([latent], image_work(latent) + 1e-9) == latent.num_inference_steps


def test_second_passes_of_one_shape_run_as_one_call(hires_runner: PipelineRunner) -> None:
    first = hires(hires_runner)
    batch = [
        WorkItem(id=f"i{k}", parameters=first.model_copy(update={"seed": k})) for k in range(3)
    ]
    outcomes = hires_runner.generate_batch(batch)
    assert all(isinstance(o, Generation) and o.batch_size == 3 for o in outcomes)
    alone = hires_runner.generate(first.model_copy(update={"seed": 1}))
    together = outcomes[1]
    assert isinstance(together, Generation)
    difference = np.abs(np.asarray(alone.image, int) - np.asarray(together.image, int)).max()
    assert difference <= 1  # batching's float rounding, as for one pass


def test_progress_runs_through_both_passes_and_says_which(
    tiny_model: LoadedModel, upscalers: Upscalers
) -> None:
    tracker = Tracker()
    runner = PipelineRunner(tiny_model, tracker=tracker, upscalers=upscalers)
    events: list[dict[str, object]] = []
    tracker.publish = events.extend  # type: ignore[method-assign]
    parameters = hires(runner, steps=6, strength=0.5)  # 4 steps, then 3
    runner.generate_batch([WorkItem(id="a", parameters=parameters, report=True)])
    seen = [(e["current_pass"], e["step"], e["steps"]) for e in events]
    # 4 + 3 steps as planned; the run of events ends where it says it ends (sd-tiny's PNDM
    # loops once more a pass than its steps).
    assert seen[0] == (1, 0, 7) and seen[-1][0] == 2 and seen[-1][1] == seen[-1][2], seen
    assert [s for _, s, _ in seen] == sorted(s for _, s, _ in seen)
    assert {p for p, _, _ in seen} == {1, 2}


def test_a_cancel_during_the_second_pass_stops_it_within_a_step(
    tiny_model: LoadedModel, upscalers: Upscalers
) -> None:
    tracker = Tracker()
    runner = PipelineRunner(tiny_model, tracker=tracker, upscalers=upscalers)
    events: list[dict[str, object]] = []

    def publish(made: list[dict[str, object]]) -> None:
        events.extend(made)
        if any(e["current_pass"] == 2 and e["step"] == 5 for e in made):
            threading.Thread(target=tracker.cancel, args=(["a"],)).start()

    tracker.publish = publish  # type: ignore[method-assign]
    parameters = hires(runner, steps=40, strength=1.0)  # 4 steps, then 40
    (outcome,) = runner.generate_batch([WorkItem(id="a", parameters=parameters, report=True)])
    assert isinstance(outcome, Failure) and outcome.error == "Cancelled"
    last = max(int(e["step"]) for e in events)  # type: ignore[call-overload]
    assert 5 <= last <= 7, last  # stopped within a step of the cancel (of 44)


def test_the_images_install_the_spandrel_development_does() -> None:
    """Both bentofiles install spandrel through scripts/bento-setup.sh (their setup script
    runs before the bento's source is in the image, so it holds its own pin)."""
    repo = Path(__file__).parent.parent
    (pinned,) = [
        line
        for line in (repo / "requirements-upscalers.txt").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    assert f'"{pinned}"' in (repo / "scripts/bento-setup.sh").read_text()
    for bentofile in ("bentofile.yaml", "bentofile.cpu.yaml"):
        assert 'setup_script: "scripts/bento-setup.sh"' in (repo / bentofile).read_text()
