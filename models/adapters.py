"""LoRA adapters in the BentoML model store: imported once, versioned, tied to a base model.

An adapter is stored as its safetensors file as given (diffusers' or kohya's layout: diffusers
converts kohya's when it loads), with its base model's name and family in the metadata. It is
checked at import by loading it into its base pipeline, so one that does not fit is refused
then, not at a client's request.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

import bentoml
from bentoml.exceptions import NotFound

from .families import family_of
from .recipes import AdapterRecipe
from .store import find_model, newest_of_kind

logger = logging.getLogger(__name__)

KIND = "lora"  # the `kind` label that tells adapters from pipelines in the store
WEIGHTS = "pytorch_lora_weights.safetensors"  # diffusers' file name for LoRA weights


class BadAdapter(ValueError):
    """A file that is not a LoRA adapter of its base model."""


def weights_file(source: Path) -> Path:
    """The safetensors file of ``source``: the file itself, or the one file in a directory."""
    if source.is_file():
        return source
    found = sorted(source.glob("*.safetensors")) if source.is_dir() else []
    if len(found) != 1:
        raise BadAdapter(f"{source} must be a .safetensors file or a directory holding one")
    return found[0]


def import_lora(source: Path, name: str, base: str, *, label: str | None = None) -> bentoml.Model:
    """Store ``source`` as adapter ``name`` of the stored model ``base`` (a new version when
    ``name`` has none); ``label`` says where it came from (default: ``source``)."""
    from diffusers import AutoPipelineForText2Image  # torch only where an adapter is checked

    weights = weights_file(source)
    stored_base = find_model(base)
    pipeline = AutoPipelineForText2Image.from_pretrained(stored_base.path)
    try:
        pipeline.load_lora_weights(str(weights), adapter_name="check")
    except Exception as error:  # diffusers raises many kinds for a file that does not fit
        raise BadAdapter(
            f"{weights} is not a LoRA adapter of {stored_base.tag}: {error}"
        ) from error
    metadata = {
        "base": stored_base.tag.name,
        # From the pipeline class: models stored before families were recorded lack "family".
        "family": family_of(str(stored_base.info.metadata["pipeline"])).name,
        "source": label or str(source),
    }
    with bentoml.models.create(name, labels={"kind": KIND}, metadata=metadata) as model:
        shutil.copyfile(weights, Path(model.path) / WEIGHTS)
    logger.info("stored LoRA %s for %s as %s", source, stored_base.tag, model.tag)
    return model


def ensure_adapter(recipe: AdapterRecipe) -> bentoml.Model:
    """The recipe's adapter, built and stored the first time it is needed."""
    try:
        return bentoml.models.get(recipe.tag)
    except NotFound:
        from .build import build_lora  # torch only where an adapter is built

        with tempfile.TemporaryDirectory() as built:
            build_lora(recipe, Path(built))
            return import_lora(Path(built), recipe.tag, recipe.base, label=f"recipe {recipe.name}")


def stored_adapters(bases: list[str]) -> list[bentoml.Model]:
    """The newest version of each stored adapter of the models named ``bases``."""
    return newest_of_kind(KIND, lambda metadata: metadata.get("base") in bases)
