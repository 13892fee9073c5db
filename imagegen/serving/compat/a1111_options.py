"""AUTOMATIC1111's settings (`POST /sdapi/v1/options`, a request's `override_settings`) under
one rule:

- a setting this service holds is applied, for the calling key: `sd_model_checkpoint` (the
  model), `CLIP_stop_at_last_layers` (CLIP skip), `sd_vae` (`Automatic` or `None`: the model's
  own VAE, the only one served);
- a setting A1111 has that changes the image and that this service cannot honour (`eta_*`,
  `s_*`, `eta_noise_seed_delta`, token merging, ...) is accepted at A1111's default value,
  which changes nothing, and is otherwise a 422 naming it;
- any other setting (saving, grids, formats of files on disk, UI options, other tools' keys)
  cannot change the image here: it is accepted, kept for `GET /options`, and ignored.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from imagegen.errors import Unsupported
from imagegen.schemas import MAX_CLIP_SKIP, ModelInfo

HELD = ("sd_model_checkpoint", "CLIP_stop_at_last_layers", "sd_vae")
VAES = ("Automatic", "None")  # A1111's: the VAE chosen for the checkpoint, the one inside it
# A1111's settings that change the image, at A1111's defaults (modules/shared_options.py).
IMAGE_SETTINGS: dict[str, Any] = {
    "eta_ddim": 0.0,
    "eta_ancestral": 1.0,
    "ddim_discretize": "uniform",
    "s_churn": 0.0,
    "s_tmin": 0.0,
    "s_tmax": 0.0,
    "s_noise": 1.0,
    "s_min_uncond": 0.0,
    "k_sched_type": "Automatic",
    "sigma_min": 0.0,
    "sigma_max": 0.0,
    "rho": 0.0,
    "eta_noise_seed_delta": 0,
    "always_discard_next_to_last_sigma": False,
    "sgm_noise_multiplier": False,
    "uni_pc_variant": "bh1",
    "uni_pc_skip_type": "time_uniform",
    "uni_pc_order": 3,
    "uni_pc_lower_order_final": True,
    "sd_noise_schedule": "Default",
    "token_merging_ratio": 0.0,
    "token_merging_ratio_img2img": 0.0,
    "token_merging_ratio_hr": 0.0,
    "sd_unet": "Automatic",
    "sd_hypernetwork": "None",
    "emphasis": "Original",
    "use_old_emphasis_implementation": False,
    "img2img_color_correction": False,
    "img2img_fix_steps": False,
    "initial_noise_multiplier": 1.0,
    "img2img_extra_noise": 0.0,
    "inpainting_mask_weight": 1.0,
    "extra_networks_default_multiplier": 1.0,
    "use_old_karras_scheduler_sigmas": False,
    "no_dpmpp_sde_batch_determinism": False,
    "dont_fix_second_order_samplers_schedule": False,
    "sd_refiner_checkpoint": "None",
    "tiling": False,
}
MAX_KEPT = 256  # settings kept per key for `GET /options`
MAX_VALUE_CHARS = 4096  # one kept value, as JSON


@dataclass(frozen=True)
class Held:
    """What a set of settings says for a generation; None: not said."""

    model: str | None = None  # `name:version`
    clip_skip: int | None = None
    vae: str | None = None


def held(settings: dict[str, Any], infos: list[ModelInfo], where: str = "") -> Held:
    """The held settings among ``settings``, checked by the rule (``where`` prefixes the field
    named in a 422: `override_settings.`)."""
    for name, value in settings.items():
        if name in IMAGE_SETTINGS and value != IMAGE_SETTINGS[name]:
            raise Unsupported(
                f"`{where}{name}` changes the image in a way this service cannot: it must be "
                f"{IMAGE_SETTINGS[name]!r} (A1111's default), but is {value!r}.",
                field=f"{where}{name}",
            )
    model = settings.get("sd_model_checkpoint")
    clip_skip = settings.get("CLIP_stop_at_last_layers")
    vae = settings.get("sd_vae")
    if clip_skip is not None and (
        isinstance(clip_skip, bool)
        or not isinstance(clip_skip, int | float)
        or clip_skip != int(clip_skip)
        or not 1 <= clip_skip <= MAX_CLIP_SKIP
    ):
        raise Unsupported(
            f"`{where}CLIP_stop_at_last_layers` must be a whole number from 1 to "
            f"{MAX_CLIP_SKIP}, but is {clip_skip!r}.",
            field=f"{where}CLIP_stop_at_last_layers",
        )
    if vae is not None and vae not in (*VAES, ""):
        raise Unsupported(
            f"`{where}sd_vae` must be `Automatic` or `None`: the model's own VAE is the only "
            f"one served, but is {vae!r}.",
            field=f"{where}sd_vae",
        )
    return Held(
        model=checkpoint(str(model), infos, f"{where}sd_model_checkpoint").tag if model else None,
        clip_skip=int(clip_skip) if clip_skip is not None else None,
        vae=vae or None,
    )


def kept(before: dict[str, Any], settings: dict[str, Any]) -> dict[str, Any]:
    """A key's settings after ``settings`` are set, bounded in count and size."""
    after = {**before, **settings}
    if len(after) > MAX_KEPT:
        raise Unsupported(
            f"`options` may hold at most {MAX_KEPT} settings per key, but would hold {len(after)}.",
            field="options",
        )
    for name, value in settings.items():
        if len(json.dumps(value)) > MAX_VALUE_CHARS:
            raise Unsupported(
                f"`{name}` must be at most {MAX_VALUE_CHARS} characters as JSON.", field=name
            )
    return after


def checkpoint(name: str, infos: list[ModelInfo], field: str) -> ModelInfo:
    """The loaded model an A1111 checkpoint title, file name or model name means."""
    bare = name.split(" [")[0].removesuffix(".safetensors").removesuffix(".ckpt")
    for info in infos:
        if bare in (info.name, info.tag) or name == title(info):
            return info
    raise Unsupported(
        f"`{field}` must be one of the loaded models "
        f"({', '.join(title(info) for info in infos)}), but is {name!r}.",
        field=field,
    )


def model_sha256(info: ModelInfo) -> str:
    """A1111's model hash (here of the model's `name:version`, not of a file)."""
    return hashlib.sha256(info.tag.encode()).hexdigest()


def model_hash(info: ModelInfo) -> str:
    """A1111's short model hash: its first 10 hex digits."""
    return model_sha256(info)[:10]


def title(info: ModelInfo) -> str:
    return f"{info.name} [{model_hash(info)}]"
