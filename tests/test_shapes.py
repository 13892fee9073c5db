"""The demo model ``sd-shapes``: its synthetic world, its committed weights and their recipe, its
training code, and its place as the default model."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open

from imagegen.settings import Settings
from models.build import build_tokenizer, build_untrained, load_weights
from models.recipes import EMBEDDED, SD_SHAPES
from models.shapes import COLOURS, SHAPES, WORDS, Scene, caption, draw, measure, random_scene
from models.store import ensure_built
from models.training import SHAPES_TRAINING, recipe_hash, train_shapes


def test_the_committed_weights_were_trained_by_the_current_recipe() -> None:
    """A change to the architecture, the training settings or the synthetic world changes the
    hash: retrain (`python -m models train-shapes`) and commit the new weights."""
    with safe_open(SD_SHAPES.weights, framework="pt") as weights:
        assert weights.metadata()["recipe"] == recipe_hash()


@pytest.mark.parametrize("field", ["unet_steps", "vae_steps", "seed"])
def test_the_recipe_hash_changes_with_the_training_settings(field: str) -> None:
    changed = dataclasses.replace(SHAPES_TRAINING, **{field: getattr(SHAPES_TRAINING, field) + 1})
    assert recipe_hash(training=changed) != recipe_hash()


def test_the_recipe_hash_changes_with_the_world(monkeypatch: pytest.MonkeyPatch) -> None:
    current = recipe_hash()
    monkeypatch.setitem(COLOURS, "red", (255, 0, 0))
    assert recipe_hash() != current


def test_the_weights_are_small() -> None:
    assert SD_SHAPES.weights.stat().st_size < 8_000_000


def test_sd_shapes_is_the_default_model(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("IMAGEGEN_MODEL")
    assert Settings().model == EMBEDDED.name == "sd-shapes"


def test_sd_shapes_is_stored_versioned_by_its_weights_hash() -> None:
    stored = ensure_built(SD_SHAPES)
    digest = hashlib.sha256(SD_SHAPES.weights.read_bytes()).hexdigest()
    assert str(stored.tag) == f"sd-shapes:v1-{digest[:12]}"
    metadata = stored.info.metadata
    assert (metadata["native_width"], metadata["native_height"]) == (64, 64)
    assert (metadata["default_steps"], metadata["default_guidance_scale"]) == (20, 2.0)


def test_every_word_of_the_grammar_is_one_token() -> None:
    tokenizer = build_tokenizer(WORDS)
    ids = tokenizer(caption("purple", "triangle", "orange")).input_ids
    assert tokenizer.convert_ids_to_tokens(ids)[1:-1] == [
        f"{word}</w>" for word in ["a", "purple", "triangle", "on", "a", "orange", "background"]
    ]


def test_other_words_fall_back_to_bytes() -> None:
    tokenizer = build_tokenizer(WORDS)
    ids = tokenizer("a cat astronaut").input_ids
    words = ids[1 : ids.index(tokenizer.eos_token_id)]
    assert tokenizer.unk_token_id not in words
    assert len(words) > 3


@pytest.mark.parametrize(
    ("parts", "text"),
    [
        (("red", "circle", "blue"), "a red circle on a blue background"),
        (("red", "circle", None), "a red circle"),
        ((None, "circle", "blue"), "a circle on a blue background"),
        (("red", None, "blue"), "a red shape on a blue background"),
        ((None, None, "blue"), "a blue background"),
        ((None, None, None), ""),
    ],
)
def test_captions_leave_out_what_is_not_given(
    parts: tuple[str | None, str | None, str | None], text: str
) -> None:
    assert caption(*parts) == text


def test_measure_reads_back_every_drawn_scene() -> None:
    rng = np.random.default_rng(7)
    scenes = [random_scene(rng) for _ in range(300)]
    readings = [measure(draw(scene)) for scene in scenes]
    assert [(r.background, r.colour, r.shape) for r in readings] == [
        (s.background, s.colour, s.shape) for s in scenes
    ]


@pytest.mark.parametrize("shape", SHAPES)
def test_measure_tells_the_shapes_apart_at_every_size(shape: str) -> None:
    for size in (26, 35, 44):
        scene = Scene("white", shape, "black", size, (32, 32))
        assert measure(draw(scene)).shape == shape


def test_measure_finds_no_shape_on_a_plain_background() -> None:
    plain = np.full((64, 64, 3), COLOURS["green"], dtype=np.uint8)
    reading = measure(plain)
    assert (reading.background, reading.colour, reading.shape) == ("green", None, None)


@pytest.mark.slow
def test_training_writes_loadable_weights_and_resumes_from_its_stages(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The training code runs (two steps a stage), and its file loads as the service loads
    the committed one."""
    training = dataclasses.replace(
        SHAPES_TRAINING, vae_steps=2, unet_steps=2, scenes=16, scale_samples=16, warmup_steps=1
    )
    out = train_shapes(tmp_path / "w.safetensors", tmp_path / "work", training=training)
    pipeline = build_untrained(SD_SHAPES)
    metadata = load_weights(pipeline, out)
    assert metadata["recipe"] == recipe_hash(training=training) != recipe_hash()
    assert pipeline.vae.config.scaling_factor == float(metadata["vae_scaling_factor"]) > 0
    with caplog.at_level(logging.INFO, logger="models.training"):
        train_shapes(tmp_path / "again.safetensors", tmp_path / "work", training=training)
    assert "reusing" in caplog.text  # the VAE stage, kept in the work folder
