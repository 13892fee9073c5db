"""The pipeline families the service runs, and what sets them apart for a request.

Each family is one shape of diffusers pipeline: its text encoders, its denoiser (a UNet or a
transformer), its schedulers, and what its call takes. Knows nothing of HTTP and imports no
ML library (the public service reads it); ``models.families.<name>`` builds each family's
tiny pipeline from code.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Family:
    name: str  # as `GET /models` and the model store's metadata say it
    label: str  # for people: error messages, the docs
    pipeline: str  # its diffusers text-to-image pipeline class
    # Classifier-free guidance runs the denoiser twice per step, on the prompt and on the
    # negative prompt; a guidance-distilled family (FLUX.1) takes the scale as an input of
    # its one pass, or ignores it, and has no negative prompt.
    classifier_free_guidance: bool = True
    denoiser: str = "unet"  # the pipeline's attribute holding it
    # The tokenizer of the text encoder that reads the most of a prompt: its limit is the
    # prompt's (CLIP reads 77 tokens; SD3 and FLUX.1 also give T5 the whole prompt).
    prompt_tokenizer: str = "tokenizer"
    # Whether its pipeline can read the prompt from an earlier CLIP layer (`clip_skip`).
    clip_skip: bool = True
    # Whether its latents are an image's grid, which hires fix's latent upscalers enlarge
    # (FLUX.1's pipeline packs them into a sequence of patches).
    latent_upscale: bool = True


FAMILIES = {
    family.name: family
    for family in (
        Family("sd", "Stable Diffusion 1.x/2.x", "StableDiffusionPipeline"),
        Family("sdxl", "Stable Diffusion XL", "StableDiffusionXLPipeline"),
        Family(
            "sd3",
            "Stable Diffusion 3",
            "StableDiffusion3Pipeline",
            denoiser="transformer",
            prompt_tokenizer="tokenizer_3",
        ),
        Family(
            "flux",
            "FLUX.1",
            "FluxPipeline",
            classifier_free_guidance=False,
            denoiser="transformer",
            prompt_tokenizer="tokenizer_2",
            clip_skip=False,
            latent_upscale=False,
        ),
    )
}
# A dedicated inpainting checkpoint is saved with its inpainting pipeline's class.
PIPELINES = {
    **{family.pipeline: family for family in FAMILIES.values()},
    "StableDiffusionInpaintPipeline": FAMILIES["sd"],
    "StableDiffusionXLInpaintPipeline": FAMILIES["sdxl"],
}


class UnknownFamily(ValueError):
    """A pipeline of a shape the service does not run."""


def family_of(pipeline_class: str) -> Family:
    """The family of a saved pipeline, from its class name (``model_index.json``)."""
    try:
        return PIPELINES[pipeline_class]
    except KeyError:
        known = ", ".join(sorted(PIPELINES))
        raise UnknownFamily(
            f"{pipeline_class} is not a pipeline this service runs (it runs {known})"
        ) from None
