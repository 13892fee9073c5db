"""The SDXL, SD3 and FLUX.1 families in-process, each on its tiny pipeline built from code:
each loads through the auto pipelines, generates deterministically in every mode, reports
what it is, and refuses the fields it cannot honour, naming the field and the family."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import bentoml
import numpy as np
import pytest
import torch

from imagegen.engine.generation import PipelineRunner, preview_png
from imagegen.engine.loading import LoadedModel
from imagegen.errors import InvalidField
from imagegen.inputs import pack
from imagegen.parameters import resolve
from imagegen.schemas import ImageRequest
from models.__main__ import main as models_command
from models.build import build_pipeline
from models.families import UnknownFamily, family_of
from models.recipes import FLUX_TINY, RECIPES, SD3_TINY, SDXL_TINY
from tests.conftest import loaded_recipe
from tests.test_edits import INSIDE, MASK, PICTURE, edit_item, made

# name -> (family, pipeline class, guidance, schedulers it accepts)
FAMILIES = {
    "sd-tiny": ("sd", "StableDiffusionPipeline", "classifier-free", "pndm"),
    "sdxl-tiny": ("sdxl", "StableDiffusionXLPipeline", "classifier-free", "euler"),
    "sd3-tiny": ("sd3", "StableDiffusion3Pipeline", "classifier-free", "flow_match_euler"),
    "flux-tiny": ("flux", "FluxPipeline", "none", "flow_match_euler"),
}
NEW_FAMILIES = ["sdxl-tiny", "sd3-tiny", "flux-tiny"]


def generate(model: LoadedModel, **fields: Any) -> np.ndarray:
    request = ImageRequest.model_validate({"prompt": "a red circle", "seed": 3, **fields})
    runner = PipelineRunner(model)
    return np.asarray(runner.generate(resolve(request, model.info)).image, dtype=int)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_each_family_reports_what_it_is(name: str) -> None:
    family, pipeline, guidance, default_scheduler = FAMILIES[name]
    info = loaded_recipe(name).info
    assert (info.family, info.pipeline, info.guidance) == (family, pipeline, guidance)
    assert info.default_scheduler == default_scheduler
    assert info.modes == ["text-to-image", "image-to-image", "inpainting"]
    assert (info.native_width, info.native_height) == (64, 64)
    expected = sum(
        p.numel() * p.element_size()
        for c in loaded_recipe(name).pipeline.components.values()
        if isinstance(c, torch.nn.Module)
        for p in c.parameters()
    )
    assert info.weights_bytes == expected > 0


@pytest.mark.parametrize("name", ["sd3-tiny", "flux-tiny"])
def test_flow_matching_families_accept_only_flow_matching_schedulers(name: str) -> None:
    assert loaded_recipe(name).info.schedulers == ["flow_match_euler"]


@pytest.mark.parametrize("name", NEW_FAMILIES)
def test_each_family_is_deterministic_and_follows_the_prompt(name: str) -> None:
    model = loaded_recipe(name)
    first, again = generate(model), generate(model)
    assert first.shape == (64, 64, 3) and first.std() > 0
    assert np.array_equal(first, again)
    assert not np.array_equal(first, generate(model, prompt="a blue square"))
    assert not np.array_equal(first, generate(model, seed=4))


@pytest.mark.parametrize("name", NEW_FAMILIES)
def test_each_family_builds_the_same_weights_every_time(name: str) -> None:
    first, second = build_pipeline(RECIPES[name]), build_pipeline(RECIPES[name])
    denoiser = first.transformer if name != "sdxl-tiny" else first.unet
    other = second.transformer if name != "sdxl-tiny" else second.unet
    assert all(
        torch.equal(a, b)
        for a, b in zip(denoiser.state_dict().values(), other.state_dict().values(), strict=True)
    )


@pytest.mark.parametrize("name", NEW_FAMILIES)
def test_each_family_edits_images_and_inpainting_keeps_black_pixels(name: str) -> None:
    model = loaded_recipe(name)
    runner = PipelineRunner(model)
    original = np.asarray(PICTURE, dtype=float)
    (moved,) = made(runner, edit_item(model, image=pack(PICTURE), strength=0.5))
    assert moved.shape == original.shape and not np.array_equal(moved, original)
    (inpainted,) = made(runner, edit_item(model, image=pack(PICTURE), mask=pack(MASK)))
    assert np.array_equal(inpainted[~INSIDE], original[~INSIDE])
    assert not np.array_equal(inpainted[INSIDE], original[INSIDE])


def test_sdxl_uses_the_second_encoder_and_size_conditioning() -> None:
    """SDXL's UNet reads six size numbers and the second encoder's pooled text: the prompt
    reaches it through both encoders."""
    unet = loaded_recipe("sdxl-tiny").pipeline.unet
    assert unet.config.addition_embed_type == "text_time"
    assert unet.config.cross_attention_dim == 2 * SDXL_TINY.text_encoder["hidden_size"]


@pytest.mark.parametrize(
    ("name", "fields", "field", "words"),
    [
        ("flux-tiny", {"negative_prompt": "blurry"}, "negative_prompt", ["FLUX.1", "distilled"]),
        ("flux-tiny", {"guidance_scale": 3.5}, "guidance_scale", ["FLUX.1", "ignores"]),
        ("flux-tiny", {"scheduler": "euler"}, "scheduler", ["FLUX.1", "flow_match_euler"]),
        ("sd3-tiny", {"scheduler": "dpm++"}, "scheduler", ["Stable Diffusion 3"]),
        ("sdxl-tiny", {"scheduler": "flow_match_euler"}, "scheduler", ["Stable Diffusion XL"]),
    ],
)
def test_a_field_the_family_cannot_honour_is_refused(
    name: str, fields: dict[str, Any], field: str, words: list[str]
) -> None:
    info = loaded_recipe(name).info
    with pytest.raises(InvalidField) as caught:
        resolve(ImageRequest.model_validate({"prompt": "a cat", **fields}), info)
    assert caught.value.field == field
    assert all(word in str(caught.value) for word in [f"`{field}`", name, *words])


def test_guidance_and_negative_prompts_still_work_where_the_family_has_them() -> None:
    model = loaded_recipe("sd3-tiny")
    plain = generate(model, guidance_scale=5.0)
    assert not np.array_equal(plain, generate(model, guidance_scale=5.0, negative_prompt="x"))


def test_a_prompt_is_bounded_by_the_family_s_longest_reader() -> None:
    """CLIP reads 77 tokens; FLUX.1 also gives the prompt to T5, which reads 512."""
    long_prompt = "a red circle " * 10  # 130 byte-level tokens
    flux, tiny = (
        PipelineRunner(loaded_recipe("flux-tiny")),
        PipelineRunner(loaded_recipe("sd-tiny")),
    )
    assert flux.generate(resolve(ImageRequest(prompt=long_prompt), flux.model.info)).image
    with pytest.raises(InvalidField, match="at most 77 tokens"):
        tiny.generate(resolve(ImageRequest(prompt=long_prompt), tiny.model.info))
    with pytest.raises(InvalidField, match="at most 512 tokens"):
        flux.generate(resolve(ImageRequest(prompt="ab" * 400), flux.model.info))


def test_previews_are_made_only_for_latents_the_approximation_knows() -> None:
    assert preview_png(torch.zeros(4, 8, 8)) is not None  # SD's, SDXL's
    assert preview_png(torch.zeros(16, 64)) is None  # FLUX.1's packed sequence


@pytest.mark.parametrize("recipe", [SDXL_TINY, SD3_TINY, FLUX_TINY], ids=lambda r: r.name)
def test_import_stores_each_family_and_records_it(
    recipe: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    build_pipeline(recipe).save_pretrained(tmp_path / recipe.name)
    models_command(["import", str(tmp_path / recipe.name), "--name", f"imported-{recipe.name}"])
    tag = capsys.readouterr().out.strip().splitlines()[-1]
    stored = bentoml.models.get(tag)
    assert stored.info.metadata["family"] == recipe.family


def test_an_unknown_pipeline_is_refused_naming_the_ones_that_run() -> None:
    with pytest.raises(UnknownFamily, match="StableDiffusionXLPipeline"):
        family_of("KandinskyPipeline")
