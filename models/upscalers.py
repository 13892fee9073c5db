"""Super-resolution networks in the BentoML model store: imported once from a weights file,
their architecture detected by spandrel, versioned, packed by ``bentoml build``.

spandrel (the loader ComfyUI and Forge use) tells ESRGAN, Real-ESRGAN, SwinIR, HAT, DAT, SPAN
and the rest apart by their weights' names and shapes. Its package ``__init__`` imports every
architecture it knows, and two of them (LaMa, an inpainting model, and RestoreFormer, a face
restorer: neither an upscaler) import torchvision, which has no CPU build on PyPI for the
torch this project pins. So its registry is assembled here from the super-resolution
architectures alone, imported without running that ``__init__``.

A stored upscaler is its weights as one ``upscaler.safetensors`` (a ``.pth`` is converted at
import), with its architecture and scale in the metadata; it is checked at import by loading
it, so a file that is no upscaler is refused then, not at a client's request.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import sys
import tempfile
import types
from dataclasses import asdict, dataclass
from functools import cache
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING, Any

import bentoml
from bentoml.exceptions import NotFound

from .store import newest_of_kind

if TYPE_CHECKING:
    from spandrel import ImageModelDescriptor

logger = logging.getLogger(__name__)

KIND = "upscaler"  # the `kind` label that tells upscalers from pipelines in the store
WEIGHTS = "upscaler.safetensors"
# spandrel's super-resolution architectures (module names under spandrel.architectures).
ARCHITECTURES = (
    "ESRGAN",  # ESRGAN, Real-ESRGAN, BSRGAN, 4x-UltraSharp and the community's RRDB models
    "Compact",  # Real-ESRGAN's SRVGGNetCompact (realesr-general-x4v3, animevideov3)
    "SPAN",
    "SwinIR",
    "Swin2SR",
    "HAT",
    "DAT",
    "OmniSR",
    "RealCUGAN",
    "PLKSR",
    "ATD",
    "DRCT",
    "RGT",
    "CRAFT",
    "SAFMN",
    "SwiftSRGAN",
    "GRL",
    "DITN",
    "DCTLSA",
    "MoSR",
    "RCAN",
)


class BadUpscaler(ValueError):
    """A file that is not a super-resolution network spandrel knows."""


@cache
def registry() -> Any:
    """spandrel's architecture registry of :data:`ARCHITECTURES`."""
    if "spandrel" not in sys.modules:
        spec = importlib.util.find_spec("spandrel")
        if spec is None or spec.submodule_search_locations is None:
            raise ModuleNotFoundError("spandrel is not installed (see requirements.txt)")
        package = types.ModuleType("spandrel")
        package.__path__ = list(spec.submodule_search_locations)
        package.__spec__ = spec
        sys.modules["spandrel"] = package  # its submodules, without its __init__
    from spandrel.__helpers.registry import ArchRegistry, ArchSupport

    found = ArchRegistry()
    for name in ARCHITECTURES:
        module = importlib.import_module(f"spandrel.architectures.{name}")
        found.add(ArchSupport.from_architecture(getattr(module, f"{name}Arch")()))
    return found


def read_state_dict(path: Path) -> dict[str, Any]:
    """The tensors of a ``.safetensors`` or ``.pth``/``.pt``/``.ckpt`` file (weights only:
    a pickle's code is never run)."""
    import torch
    from safetensors.torch import load_file

    if path.suffix == ".safetensors":
        return load_file(path)
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many kinds for a file that is no checkpoint
        raise BadUpscaler(f"{path} is not a weights file torch can read: {error}") from error
    # Training checkpoints nest the weights.
    for key in ("params_ema", "params", "state_dict", "model"):
        if isinstance(loaded, dict) and isinstance(loaded.get(key), dict):
            loaded = loaded[key]
    if not isinstance(loaded, dict):
        raise BadUpscaler(f"{path} holds no state dict")
    return loaded


def describe(state: dict[str, Any], source: object) -> ImageModelDescriptor:
    """The loaded network of ``state``, which must be an upscaler (scale 2 or more)."""
    try:
        model = registry().load(state)
    except Exception as error:  # spandrel raises UnsupportedModelError and shape errors
        raise BadUpscaler(f"{source} is not an upscaler spandrel knows: {error}") from error
    if model.scale < 2 or model.input_channels != 3 or model.output_channels != 3:
        raise BadUpscaler(
            f"{source} is a {model.architecture.name} network of scale {model.scale} on "
            f"{model.input_channels} channels: an upscaler makes RGB images at least twice "
            "as large"
        )
    return model


def import_upscaler(source: Path, name: str, *, label: str | None = None) -> bentoml.Model:
    """Store the weights file ``source`` as upscaler ``name`` (a new version when it has
    none); ``label`` says where it came from (default: ``source``)."""
    from safetensors.torch import save_file

    state = read_state_dict(source)
    model = describe(state, source)
    metadata = {
        "architecture": model.architecture.name,
        "scale": model.scale,
        "source": label or str(source),
    }
    with bentoml.models.create(name, labels={"kind": KIND}, metadata=metadata) as stored:
        tensors = {key: value.contiguous() for key, value in model.model.state_dict().items()}
        save_file(tensors, str(Path(stored.path) / WEIGHTS))
    logger.info(
        "stored upscaler %s (%s, x%d) as %s", source, model.architecture.name, model.scale, stored
    )
    return stored


def stored_upscalers() -> list[bentoml.Model]:
    """The newest version of each stored upscaler."""
    return newest_of_kind(KIND)


def load_upscaler(stored: bentoml.Model) -> ImageModelDescriptor:
    """A stored upscaler's network, in evaluation mode, on the CPU."""
    from safetensors.torch import load_file

    return describe(load_file(Path(stored.path) / WEIGHTS), stored.tag)


@dataclass(frozen=True)
class UpscalerRecipe:
    """An ESRGAN (RRDB) network built from code with a fixed seed, for the tests: random
    weights, so its images are the input's size times its scale and nothing more."""

    name: str
    scale: int
    num_filters: int = 8
    num_blocks: int = 1
    seed: int = 0

    @property
    def tag(self) -> str:
        """Versioned by the recipe and the spandrel that builds it."""
        recipe = {**asdict(self), "spandrel": version("spandrel")}
        digest = hashlib.sha256(repr(sorted(recipe.items())).encode()).hexdigest()
        return f"{self.name}:v1-{digest[:12]}"

    def build(self, path: Path) -> None:
        import torch
        from safetensors.torch import save_file

        registry()  # spandrel's submodules importable
        from spandrel.architectures.ESRGAN import ESRGAN

        torch.manual_seed(self.seed)
        network = ESRGAN(num_filters=self.num_filters, num_blocks=self.num_blocks, scale=self.scale)
        save_file({k: v.contiguous() for k, v in network.state_dict().items()}, str(path))


# The tests' (plumbing: a few milliseconds an image).
ESRGAN_TINY_X4 = UpscalerRecipe("esrgan-tiny-x4", 4)
ESRGAN_TINY_X2 = UpscalerRecipe("esrgan-tiny-x2", 2)
# Real-ESRGAN x4plus's architecture (64 filters, 23 blocks: 16.7M parameters), random
# weights: the benchmarks' network, which costs what the real one does.
ESRGAN_X4_RANDOM = UpscalerRecipe("esrgan-x4-random", 4, num_filters=64, num_blocks=23)
UPSCALER_RECIPES = {
    recipe.name: recipe for recipe in (ESRGAN_TINY_X4, ESRGAN_TINY_X2, ESRGAN_X4_RANDOM)
}


def ensure_upscaler(recipe: UpscalerRecipe) -> bentoml.Model:
    """The recipe's upscaler, built and stored the first time it is needed."""
    try:
        return bentoml.models.get(recipe.tag)
    except NotFound:
        with tempfile.TemporaryDirectory() as built:
            path = Path(built) / WEIGHTS
            recipe.build(path)
            return import_upscaler(path, recipe.tag, label=f"recipe {recipe.name}")
