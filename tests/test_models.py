"""Models built from recipes, the model store and the import command."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import bentoml
import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from pydantic import ValidationError
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from imagegen.engine.generation import PipelineRunner
from imagegen.engine.loading import LoadedModel, load_model
from imagegen.settings import Settings
from models import recipes
from models.__main__ import default_name
from models.__main__ import main as models_command
from models.build import build_pipeline, build_tokenizer
from models.loading import choose_device, choose_dtype
from models.recipes import MAX_TOKENS, SD15_RANDOM, SD_TINY, SD_TINY_INPAINTING, SDXL_RANDOM
from models.store import UnknownModel, ensure_built, find_model, save_pipeline
from tests.test_generation import pixels


def _state(pipeline: object) -> dict[str, torch.Tensor]:
    return {
        f"{name}.{key}": value
        for name in ("unet", "vae", "text_encoder")
        for key, value in getattr(pipeline, name).state_dict().items()
    }


def test_a_random_recipe_is_identical_on_every_build() -> None:
    first, second = _state(build_pipeline(SD_TINY)), _state(build_pipeline(SD_TINY))
    assert first.keys() == second.keys()
    assert all(torch.equal(first[key], second[key]) for key in first)


def test_a_recipe_build_leaves_the_global_rng_alone() -> None:
    torch.manual_seed(1234)
    expected = torch.rand(4)
    torch.manual_seed(1234)
    build_pipeline(SD_TINY)
    assert torch.equal(torch.rand(4), expected)


@pytest.mark.parametrize(
    ("part", "key", "value"),
    [
        (SD_TINY.denoiser, "layers_per_block", 2),
        (SD_TINY.text_encoder, "num_hidden_layers", 3),
        (SD_TINY.vae, "sample_size", 128),
        (SD_TINY.scheduler[1], "beta_end", 0.02),
    ],
)
def test_a_recipe_version_changes_exactly_when_the_recipe_does(
    monkeypatch: pytest.MonkeyPatch, part: dict[str, Any], key: str, value: Any
) -> None:
    current = SD_TINY.version()
    assert current.startswith("v1-") and SD_TINY.version() == current
    monkeypatch.setitem(part, key, value)
    assert SD_TINY.version() != current
    monkeypatch.undo()
    assert SD_TINY.version() == current


def test_recipes_have_versions_of_their_own() -> None:
    assert len({recipe.version() for recipe in recipes.RECIPES.values()}) == len(recipes.RECIPES)


def test_tokenizer_covers_every_byte_and_pads_to_clip_length() -> None:
    tokenizer = build_tokenizer()
    assert tokenizer.model_max_length == MAX_TOKENS
    ids = tokenizer("naïve café ☕", padding="max_length", truncation=True).input_ids
    assert len(ids) == MAX_TOKENS
    assert tokenizer.unk_token_id not in ids[1 : ids.index(tokenizer.eos_token_id)]


def test_a_recipe_model_is_stored_once_with_its_defaults() -> None:
    first, second = ensure_built(SD_TINY), ensure_built(SD_TINY)
    assert first.tag == second.tag
    assert str(first.tag) == SD_TINY.tag
    versions = [m for m in bentoml.models.list() if m.tag.name == SD_TINY.name]
    assert len(versions) == 1
    metadata = first.info.metadata
    assert (metadata["native_width"], metadata["native_height"]) == (64, 64)
    assert metadata["default_steps"] == SD_TINY.default_steps


def test_find_model_resolves_name_and_full_tag() -> None:
    stored = ensure_built(SD_TINY)
    assert find_model(SD_TINY.name).tag == stored.tag
    assert find_model(str(stored.tag)).tag == stored.tag


def test_unknown_model_error_lists_the_stored_ones() -> None:
    stored = ensure_built(SD_TINY)
    with pytest.raises(UnknownModel, match=str(stored.tag)) as caught:
        find_model("sd-nonexistent:v9")
    assert "sd-nonexistent:v9" in str(caught.value)


def test_saved_pipeline_keeps_import_time_defaults() -> None:
    model = save_pipeline(
        build_pipeline(SD_TINY), "turbo-like", source="test", steps=1, guidance_scale=0.0
    )
    loaded = load_model(model)
    assert (loaded.info.default_steps, loaded.info.default_guidance_scale) == (1, 0.0)


def test_import_command_stores_a_local_diffusers_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    build_pipeline(SD_TINY).save_pretrained(tmp_path / "my-model")
    models_command(["import", str(tmp_path / "my-model"), "--steps", "2"])
    tag = capsys.readouterr().out.strip().splitlines()[-1]
    assert tag.startswith("my-model:")
    stored = bentoml.models.get(tag)
    assert stored.info.metadata["default_steps"] == 2
    assert stored.info.labels["source"] == str(tmp_path / "my-model")
    assert load_model(stored).info.pipeline == "StableDiffusionPipeline"


def test_an_imported_inpainting_checkpoint_is_served_as_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    build_pipeline(SD_TINY_INPAINTING).save_pretrained(tmp_path / "tiny-inpainting")
    models_command(["import", str(tmp_path / "tiny-inpainting")])
    tag = capsys.readouterr().out.strip().splitlines()[-1]
    loaded = load_model(bentoml.models.get(tag))
    assert loaded.info.pipeline == "StableDiffusionInpaintPipeline"
    assert loaded.dedicated_inpainting


@pytest.mark.parametrize(
    ("source", "name"),
    [
        ("stabilityai/sd-turbo", "sd-turbo"),
        ("runwayml/stable-diffusion-v1-5", "stable-diffusion-v1-5"),
        ("/models/My Model/", "my-model"),
    ],
)
def test_default_name_is_a_valid_tag(source: str, name: str) -> None:
    assert default_name(source) == name


@pytest.mark.parametrize(("gpu", "device"), [(True, "cuda"), (False, "cpu")])
def test_auto_device_is_cuda_exactly_when_a_gpu_is_visible(
    monkeypatch: pytest.MonkeyPatch, gpu: bool, device: str
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpu)
    assert choose_device("auto") == torch.device(device)


@pytest.mark.parametrize("setting", ["cpu", "cuda", "cuda:1", "mps"])
def test_a_named_device_is_taken_as_given(setting: str) -> None:
    assert choose_device(setting) == torch.device(setting)


@pytest.mark.parametrize(
    ("setting", "device", "dtype"),
    [
        ("auto", "cuda", torch.float16),
        ("auto", "cpu", torch.float32),
        ("bfloat16", "cpu", torch.bfloat16),
        ("float32", "cuda", torch.float32),
    ],
)
def test_dtype_choice(setting: str, device: str, dtype: torch.dtype) -> None:
    assert choose_dtype(setting, torch.device(device)) == dtype


def _pixels(loaded: LoadedModel) -> np.ndarray:
    return pixels(PipelineRunner(loaded), seed=3).astype(int)


def test_defaults_turn_no_switch_on_without_a_gpu() -> None:
    assert load_model(ensure_built(SD_TINY), Settings()).info.switches == []


@pytest.mark.parametrize(
    ("setting", "switch"),
    [
        ({"channels_last": "on"}, "channels_last"),
        ({"attention_slicing": True}, "attention_slicing"),
        ({"vae_slicing": True}, "vae_slicing"),
        ({"vae_tiling": True}, "vae_tiling"),
    ],
)
def test_a_switch_applies_and_keeps_the_image(
    setting: dict[str, Any], switch: str, tiny_model: LoadedModel
) -> None:
    loaded = load_model(ensure_built(SD_TINY), Settings(**setting))
    assert loaded.info.switches == [switch]
    assert np.abs(_pixels(loaded) - _pixels(tiny_model)).max() <= 1


def test_channels_last_changes_the_memory_format() -> None:
    loaded = load_model(ensure_built(SD_TINY), Settings(channels_last="on"))
    weight = loaded.pipeline.unet.conv_in.weight
    assert weight.is_contiguous(memory_format=torch.channels_last)


def test_vae_switches_reach_the_vae() -> None:
    vae = load_model(
        ensure_built(SD_TINY), Settings(vae_slicing=True, vae_tiling=True)
    ).pipeline.vae
    assert (vae.use_slicing, vae.use_tiling) == (True, True)


def test_compile_wraps_the_denoiser() -> None:
    loaded = load_model(ensure_built(SD_TINY), Settings(compile="reduce-overhead"))
    assert loaded.info.switches == ["compile:reduce-overhead"]
    assert isinstance(loaded.pipeline.unet, torch._dynamo.eval_frame.OptimizedModule)
    assert loaded.info.step_cache is None  # per-call hooks would recompile its graph


@pytest.mark.slow
def test_a_compiled_model_warms_up_and_generates_the_same_image(tiny_model: LoadedModel) -> None:
    # Really compiles (inductor, about a minute on two cores): the path a GPU deployment takes.
    compiled = load_model(ensure_built(SD_TINY), Settings(compile="default"))
    PipelineRunner(compiled).warm_up([(64, 64)])
    assert np.abs(_pixels(compiled) - _pixels(tiny_model)).max() <= 1


def test_cpu_offload_needs_cuda() -> None:
    with pytest.raises(ValueError, match="CUDA"):
        load_model(ensure_built(SD_TINY), Settings(device="cpu", cpu_offload=True))


@pytest.mark.parametrize(
    ("sizes", "shapes"),
    [("", []), ("512x512", [(512, 512)]), ("64x96,128x64", [(64, 96), (128, 64)])],
)
def test_warmup_sizes_parse(sizes: str, shapes: list[tuple[int, int]]) -> None:
    assert Settings(warmup_sizes=sizes).warmup_shapes == shapes


@pytest.mark.parametrize("sizes", ["512", "512x", "512x512,", "512*512"])
def test_malformed_warmup_sizes_are_refused(sizes: str) -> None:
    with pytest.raises(ValidationError, match="warmup_sizes"):
        Settings(warmup_sizes=sizes)


@pytest.mark.parametrize(
    ("build", "config", "parameters"),
    [
        # Stable Diffusion 1.5's published sizes.
        (UNet2DConditionModel, SD15_RANDOM.denoiser, 859_520_964),
        (AutoencoderKL, SD15_RANDOM.vae, 83_653_863),
        # SDXL base's.
        (UNet2DConditionModel, SDXL_RANDOM.denoiser, 2_567_463_684),
        (AutoencoderKL, SDXL_RANDOM.vae, 83_653_863),
    ],
)
def test_random_recipes_have_their_models_architecture(
    build: Any, config: dict[str, Any], parameters: int
) -> None:
    with torch.device("meta"):  # shapes only: no memory, no time
        model = build(**config)
    assert sum(p.numel() for p in model.parameters()) == parameters


def test_sdxl_second_text_encoder_is_openclip_bigg() -> None:
    config = CLIPTextConfig(vocab_size=49408, **(SDXL_RANDOM.text_encoder_2 or {}))
    with torch.device("meta"):
        encoder = CLIPTextModelWithProjection(config)
    assert sum(p.numel() for p in encoder.parameters()) == 694_659_840  # ViT-bigG's text tower


def test_sd15_text_encoder_matches_clip_vit_l_but_for_the_vocabulary() -> None:
    tokenizer = build_tokenizer()
    with torch.device("meta"):
        model = CLIPTextModel(CLIPTextConfig(vocab_size=len(tokenizer), **SD15_RANDOM.text_encoder))
    clip_vit_l_text = 123_060_480  # with its 49,408-token vocabulary
    vocabulary_gap = (49_408 - len(tokenizer)) * SD15_RANDOM.text_encoder["hidden_size"]
    assert sum(p.numel() for p in model.parameters()) == clip_vit_l_text - vocabulary_gap
