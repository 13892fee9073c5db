"""Step caching (`cache`), in-process on every family's tiny pipeline: the method each takes,
that it changes the steps, that it is gone after its call, and where it is refused. Its
speed and how much it changes images are measured by `python -m bench.caching`."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from imagegen.engine.caching import FIRST_BLOCK_CACHE, PYRAMID_ATTENTION_BROADCAST, denoiser
from imagegen.engine.generation import batch_key
from imagegen.engine.loading import load_model
from imagegen.errors import InvalidField
from imagegen.parameters import resolve
from imagegen.schemas import ImageRequest
from imagegen.settings import Settings
from models.recipes import RECIPES
from models.store import ensure_built
from tests.conftest import PARAMETERS, loaded_recipe
from tests.test_families import FAMILIES, generate

METHODS = {
    "sd-tiny": PYRAMID_ATTENTION_BROADCAST,
    "sdxl-tiny": PYRAMID_ATTENTION_BROADCAST,
    "sd3-tiny": PYRAMID_ATTENTION_BROADCAST,
    "flux-tiny": FIRST_BLOCK_CACHE,
}
# Enough steps for some to fall in the middle of the schedule, where attention is reused.
STEPS = 12


@pytest.mark.parametrize("name", list(FAMILIES))
def test_each_family_caches_and_leaves_its_model_as_loaded(name: str) -> None:
    model = loaded_recipe(name)
    assert model.info.step_cache == METHODS[name]
    plain = generate(model, num_inference_steps=STEPS)
    cached = generate(model, num_inference_steps=STEPS, cache=True)
    assert cached.shape == plain.shape
    assert (generate(model, num_inference_steps=STEPS) == plain).all()  # no hook left behind
    assert (generate(model, num_inference_steps=STEPS, cache=True) == cached).all()
    assert not denoiser(model.pipeline)._forward_pre_hooks


def test_a_cached_image_differs_a_little() -> None:
    model = loaded_recipe("sd-tiny")
    plain = generate(model, num_inference_steps=STEPS)
    difference = abs(generate(model, num_inference_steps=STEPS, cache=True) - plain)
    assert 0 < difference.mean() < 8  # out of 255: reused attention, not another picture


def test_cached_and_uncached_images_never_share_a_call() -> None:
    assert batch_key(PARAMETERS) != batch_key(PARAMETERS.model_copy(update={"cache": True}))


def test_a_model_without_a_step_cache_refuses_it_naming_the_field() -> None:
    info = loaded_recipe("sd-tiny").info.model_copy(update={"step_cache": None})
    with pytest.raises(InvalidField) as refused:
        resolve(ImageRequest(prompt="a cat", cache=True), info)
    assert refused.value.field == "cache"
    assert resolve(ImageRequest(prompt="a cat"), info).cache is False


def test_the_operator_may_cache_a_models_requests_by_default() -> None:
    stored = ensure_built(RECIPES["sd-tiny"])
    settings = Settings(model="sd-tiny", cache_models="sd-tiny")
    info = load_model(stored, settings).info
    assert info.cache_default is True
    assert resolve(ImageRequest(prompt="a cat"), info).cache is True
    assert resolve(ImageRequest(prompt="a cat", cache=False), info).cache is False
    everything = Settings(model="sd-tiny", cache_models="*")
    assert load_model(stored, everything).info.cache_default is True
    assert load_model(stored, Settings(model="sd-tiny")).info.cache_default is False


def test_caching_by_default_names_served_models_only() -> None:
    with pytest.raises(ValidationError, match="cache_models"):
        Settings(model="sd-tiny", cache_models="sd-tiny,sdxl")
