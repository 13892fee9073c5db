"""LoRA adapters in-process, on sd-tiny with two small adapters built from code: applied,
scaled, combined and removed per request; never leaking into a request without them; kept in
an LRU; imported in diffusers' and kohya's layouts, and refused when they do not fit."""

from __future__ import annotations

import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import bentoml
import numpy as np
import pytest
import torch
from pydantic import ValidationError
from safetensors.torch import load_file, save_file

from imagegen.engine.generation import PipelineRunner, plan_calls
from imagegen.engine.loading import LoadedModel, load_model
from imagegen.errors import InvalidField
from imagegen.hop import Generation
from imagegen.parameters import resolve
from imagegen.schemas import ImageRequest, WorkItem
from imagegen.settings import Settings
from models.__main__ import main as models_command
from models.adapters import WEIGHTS, ensure_adapter, import_lora
from models.recipes import SD_TINY, SD_TINY_STYLE, SD_TINY_TINT, SDXL_TINY
from models.store import ensure_built


@pytest.fixture(scope="module")
def adapters() -> list[bentoml.Model]:
    return [ensure_adapter(SD_TINY_STYLE), ensure_adapter(SD_TINY_TINT)]


@pytest.fixture(scope="module")
def adapted(adapters: list[bentoml.Model]) -> LoadedModel:
    """sd-tiny with its two adapters stored (none loaded yet)."""
    return load_model(ensure_built(SD_TINY), adapters=adapters)


def request(**fields: Any) -> ImageRequest:
    return ImageRequest.model_validate({"prompt": "a red apple", "seed": 5, **fields})


def pixels(runner: PipelineRunner, **fields: Any) -> np.ndarray:
    parameters = resolve(request(**fields), runner.model.info)
    return np.asarray(runner.generate(parameters).image, dtype=int)


STYLE = {"name": "sd-tiny-style"}
TINT = {"name": "sd-tiny-tint"}


def test_models_list_their_stored_adapters(
    adapted: LoadedModel, adapters: list[bentoml.Model]
) -> None:
    assert [lora.tag for lora in adapted.info.loras] == [str(a.tag) for a in adapters]
    # Where an adapter came from (a path on the operator's disk) is not shown to clients.
    assert "source" not in adapted.info.loras[0].model_dump()


def test_an_adapter_changes_the_image_in_proportion_to_its_scale(adapted: LoadedModel) -> None:
    runner = PipelineRunner(adapted)
    plain = pixels(runner)
    full = np.abs(pixels(runner, loras=[STYLE]) - plain).mean()
    half = np.abs(pixels(runner, loras=[{**STYLE, "scale": 0.5}]) - plain).mean()
    against = np.abs(pixels(runner, loras=[{**STYLE, "scale": -1.0}]) - plain).mean()
    assert full > 4  # visibly: about 8.5 levels on average
    assert 0 < half < full and against > 4


def test_adapters_combine(adapted: LoadedModel) -> None:
    runner = PipelineRunner(adapted)
    both = pixels(runner, loras=[STYLE, TINT])
    assert not np.array_equal(both, pixels(runner, loras=[STYLE]))
    assert not np.array_equal(both, pixels(runner, loras=[TINT]))


def test_a_request_without_adapters_is_unchanged_by_earlier_ones(adapters: Any) -> None:
    runner = PipelineRunner(load_model(ensure_built(SD_TINY), adapters=adapters))
    before = pixels(runner)  # no adapter ever loaded
    with_adapter = pixels(runner, loras=[STYLE, {**TINT, "scale": -2.0}])
    after = pixels(runner)
    assert not np.array_equal(with_adapter, before)
    assert np.array_equal(after, before)
    # And the same request with its adapter again: the adapter state was restored, not lost.
    assert np.array_equal(pixels(runner, loras=[STYLE, {**TINT, "scale": -2.0}]), with_adapter)


def test_no_adapter_leaks_under_concurrency(adapters: Any) -> None:
    """Requests with and without adapters, from threads at once, batched where they may be:
    each image is the one it gets alone (byte-identical: every call here holds one image)."""
    runner = PipelineRunner(load_model(ensure_built(SD_TINY), adapters=adapters))
    asks = [
        {"seed": seed, "loras": loras}
        for seed in (1, 2, 3)
        for loras in ([], [STYLE], [TINT], [STYLE, {**TINT, "scale": 0.5}])
    ]
    alone = [pixels(runner, **ask) for ask in asks]
    with ThreadPoolExecutor(max_workers=6) as pool:
        together = list(pool.map(lambda ask: pixels(runner, **ask), asks * 2))
    assert all(np.array_equal(a, b) for a, b in zip(alone * 2, together, strict=True))


def test_a_batch_keeps_images_without_adapters_apart_from_those_with(
    adapted: LoadedModel,
) -> None:
    batch = [
        resolve(request(seed=s, **fields), adapted.info)
        for s, fields in enumerate(
            [{}, {"loras": [STYLE]}, {}, {"loras": [{**STYLE, "scale": 0.5}]}]
        )
    ]
    assert plan_calls(batch, 8) == [[0, 2], [1], [3]]
    runner = PipelineRunner(adapted, max_batch_size=8)
    clean = PipelineRunner(load_model(ensure_built(SD_TINY)), max_batch_size=8)
    items = [WorkItem(id=f"i{k}", parameters=p) for k, p in enumerate(batch)]
    mixed = runner.generate_batch(items)
    plain = clean.generate_batch([items[0], items[2]])  # the same call, no adapter anywhere
    assert all(isinstance(o, Generation) for o in [*mixed, *plain])
    for made, reference in zip([mixed[0], mixed[2]], plain, strict=True):
        assert made.image.tobytes() == reference.image.tobytes()  # type: ignore[union-attr]


def test_least_recently_used_adapters_are_unloaded_past_the_limit(
    adapters: list[bentoml.Model], tmp_path: Path
) -> None:
    copies = [
        import_lora(Path(adapters[k % 2].path) / WEIGHTS, f"lru-copy-{k}", "sd-tiny")
        for k in range(5)
    ]
    model = load_model(ensure_built(SD_TINY), Settings(max_loras=4), [*adapters, *copies])
    runner = PipelineRunner(model)
    first = pixels(runner, loras=[{"name": "lru-copy-0"}])
    for k in range(1, 5):
        pixels(runner, loras=[{"name": f"lru-copy-{k}"}])
    assert len(model.adapters.loaded) == 4
    assert not any(tag.startswith("lru-copy-0:") for tag in model.adapters.loaded)
    assert np.array_equal(pixels(runner, loras=[{"name": "lru-copy-0"}]), first)  # reloaded


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({"loras": [{"name": "nope"}]}, ["`loras[0].name`", "sd-tiny-style", "'nope'"]),
        ({"loras": [STYLE, {"name": "other"}]}, ["`loras[1].name`"]),
    ],
)
def test_an_unknown_adapter_is_refused_listing_the_model_s(
    adapted: LoadedModel, fields: dict[str, Any], words: list[str]
) -> None:
    with pytest.raises(InvalidField) as caught:
        resolve(request(**fields), adapted.info)
    assert caught.value.field == "loras"
    assert all(word in str(caught.value) for word in words)


def test_another_model_s_adapter_is_refused() -> None:
    """Adapters belong to their base model: sd-tiny's are not sdxl-tiny's."""
    info = load_model(ensure_built(SDXL_TINY)).info
    with pytest.raises(InvalidField, match=r"adapter of sdxl-tiny \(stored: none\)"):
        resolve(request(loras=[STYLE]), info)


@pytest.mark.parametrize(
    "loras",
    [
        [{"name": f"a{k}"} for k in range(5)],  # more than four
        [STYLE, STYLE],  # twice
        [{**STYLE, "scale": 2.5}],  # out of range
        [{**STYLE, "strength": 1}],  # unknown key
    ],
)
def test_malformed_loras_break_the_schema(loras: list[dict[str, Any]]) -> None:
    with pytest.raises(ValidationError) as caught:
        request(loras=loras)
    assert caught.value.errors()[0]["loc"][0] == "loras"


def test_recorded_parameters_name_each_adapter_by_version_and_scale(
    adapted: LoadedModel,
) -> None:
    parameters = resolve(request(loras=[{**STYLE, "scale": 0.7}]), adapted.info)
    assert [(lora.name, lora.scale) for lora in parameters.loras] == [
        (adapted.info.loras[0].tag, 0.7)
    ]


def to_kohya(diffusers_file: Path, target: Path, alpha: float) -> None:
    """Rewrite a diffusers-layout SD 1.x UNet LoRA in kohya's layout."""
    converted = {}
    for key, tensor in load_file(diffusers_file).items():
        module, factor = key.removeprefix("unet.").rsplit(".lora_", 1)
        stem = "lora_unet_" + module.replace(".", "_")
        converted[f"{stem}.lora_{'down' if factor.startswith('A') else 'up'}.weight"] = tensor
        converted[f"{stem}.alpha"] = torch.tensor(alpha)
    save_file(converted, target)


def test_a_kohya_file_imports_and_draws_as_its_diffusers_twin(
    adapters: list[bentoml.Model], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    to_kohya(Path(adapters[0].path) / WEIGHTS, tmp_path / "style.safetensors", SD_TINY_STYLE.alpha)
    models_command(
        ["import-lora", str(tmp_path / "style.safetensors"), "--name", "kohya", "--base", "sd-tiny"]
    )
    tag = capsys.readouterr().out.strip().splitlines()[-1]
    stored = bentoml.models.get(tag)
    assert stored.info.metadata == {
        "base": "sd-tiny",
        "family": "sd",
        "source": str(tmp_path / "style.safetensors"),
    }
    runner = PipelineRunner(load_model(ensure_built(SD_TINY), adapters=[adapters[0], stored]))
    assert np.array_equal(pixels(runner, loras=[{"name": "kohya"}]), pixels(runner, loras=[STYLE]))


# PEFT warns about the layers it could not match before the load fails: that is the point.
@pytest.mark.filterwarnings("ignore:While injecting the PEFT adapters:RuntimeWarning")
def test_an_adapter_that_does_not_fit_its_base_is_refused_at_import(
    adapters: list[bentoml.Model], tmp_path: Path
) -> None:
    shutil.copy(Path(adapters[0].path) / WEIGHTS, tmp_path / "tiny.safetensors")
    ensure_built(SDXL_TINY)
    with pytest.raises(SystemExit, match="is not a LoRA adapter of sdxl-tiny"):
        models_command(
            [
                "import-lora",
                str(tmp_path / "tiny.safetensors"),
                "--name",
                "x",
                "--base",
                "sdxl-tiny",
            ]
        )
    with pytest.raises(SystemExit, match=r"must be a \.safetensors file"):
        models_command(
            ["import-lora", str(tmp_path / "missing"), "--name", "x", "--base", "sd-tiny"]
        )


def test_a_model_stored_before_families_were_recorded_takes_adapters(
    adapters: list[bentoml.Model],
) -> None:
    """Models imported before the store recorded their family have only their pipeline class;
    the adapter's family comes from that."""
    base = ensure_built(SD_TINY)
    metadata = {k: v for k, v in base.info.metadata.items() if k != "family"}
    with bentoml.models.create("sd-tiny-unlabelled", metadata=metadata) as old:
        shutil.copytree(
            base.path, old.path, dirs_exist_ok=True, ignore=shutil.ignore_patterns("model.yaml")
        )
    try:
        stored = import_lora(Path(adapters[0].path) / WEIGHTS, "unlabelled-style", old.tag.name)
        assert stored.info.metadata["family"] == "sd"
        bentoml.models.delete(str(stored.tag))
    finally:
        bentoml.models.delete(str(old.tag))
