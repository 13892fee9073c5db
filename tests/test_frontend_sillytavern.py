"""SillyTavern's Stable Diffusion extension (source "Stable Diffusion WebUI / AUTOMATIC1111"),
replayed from its source over real HTTP, auth on and off.

Source: SillyTavern/SillyTavern at commit ba6f7b7a98cf7a5eaf4f0e81da9779a9a668ced4:
`src/endpoints/stable-diffusion.js` (the server side that calls the image server, with
node-fetch: `/ping`, `/upscalers`, `/vaes`, `/samplers`, `/schedulers`, `/models`,
`/set-model`, `/generate` and its interrupt on abort) and
`public/scripts/extensions/stable-diffusion/index.js` (`generateAutoImage`: the txt2img body,
the extension's settings, defaults included). The user's URL keeps only its origin
(`url.pathname = '/sdapi/v1/...'`); `auth` is "user:pass" sent as `Basic` (empty by default,
which still sends `Authorization: Basic `).
"""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import Frontend
from tests.frontend_replay import basic, png, typed_credentials

pytestmark = pytest.mark.e2e

# What node-fetch sends by itself.
NODE_FETCH = {"Accept": "*/*", "User-Agent": "node-fetch", "Accept-Encoding": "gzip, deflate, br"}


def sd(frontend: Frontend) -> httpx.Client:
    """The calls of stable-diffusion.js: `Authorization: getBasicAuthHeader(auth)` on each."""
    # With no credentials node-fetch sends `Basic ` and a server reads `Basic` (HTTP trims the
    # trailing space, and h11 here refuses to send it).
    auth = typed_credentials(frontend)
    headers = {**NODE_FETCH, "Authorization": basic(auth).rstrip()}
    return httpx.Client(base_url=frontend.url, headers=headers, timeout=120)


def generate_body(frontend: Frontend, **settings: object) -> dict[str, object]:
    """`generateAutoImage`'s txt2img body with the extension's defaults, ``settings`` changed."""
    return {
        "url": frontend.url, "auth": typed_credentials(frontend),
        "prompt": "a red circle", "negative_prompt": "lowres",
        "sampler_name": "DDIM", "scheduler": "normal", "steps": 4, "cfg_scale": 7,
        "width": 64, "height": 64, "restore_faces": False, "enable_hr": False,
        "hr_upscaler": "Latent", "hr_scale": 2.0, "denoising_strength": 0.7,
        "hr_second_pass_steps": 0,
        "override_settings": {"CLIP_stop_at_last_layers": 2},
        "override_settings_restore_afterwards": True, "clip_skip": 2,
        "save_images": True, "send_images": True, "do_not_save_grid": False,
        "do_not_save_samples": False, **settings,
    }  # fmt: skip


def test_connect_list_set_model_generate_and_interrupt(frontend: Frontend) -> None:
    with sd(frontend) as client:
        # /ping (the Connect button).
        assert client.get("/sdapi/v1/options").is_success
        # /upscalers: both lists in one Promise.all, each must answer; `None` comes first.
        upscalers = client.get("/sdapi/v1/upscalers")
        latent = client.get("/sdapi/v1/latent-upscale-modes")
        assert upscalers.is_success and latent.is_success
        names = [x["name"] for x in upscalers.json()]
        names[1:1] = [x["name"] for x in latent.json()]
        assert names[0] == "None"
        # /vaes, /samplers, /schedulers, /models.
        vaes = client.get("/sdapi/v1/sd-vae")
        assert vaes.is_success and [x["model_name"] for x in vaes.json()] == []
        samplers = [x["name"] for x in client.get("/sdapi/v1/samplers").json()]
        schedulers = [x["name"] for x in client.get("/sdapi/v1/schedulers").json()]
        models = [
            {"value": x["title"], "text": x["title"]}
            for x in client.get("/sdapi/v1/sd-models").json()
        ]
        # The extension's defaults are among the lists: sampler DDIM, scheduler `normal`.
        assert "DDIM" in samplers and "normal" in schedulers
        # /set-model: a partial options dict, then progress until idle (at most 10 x 2 s).
        set_model = client.post(
            "/sdapi/v1/options",
            content=f'{{"sd_model_checkpoint":"{models[0]["value"]}"}}',
            headers={"Content-Type": "application/json"},
        )
        assert set_model.is_success, set_model.text
        state = client.get("/sdapi/v1/progress").json()
        assert state["progress"] == 0.0 and state["state"]["job_count"] == 0  # first poll
        # /generate: the extension's whole body, its `url` and `auth` included, the seed
        # omitted (-1), no VAE chosen (`sd_vae` undefined, so dropped by JSON.stringify).
        body = generate_body(frontend)
        made = client.post(
            "/sdapi/v1/txt2img", json=body, headers={"Content-Type": "application/json"}
        )
        assert made.is_success, made.text
        assert png(made.json()["images"][0]).size == (64, 64)
        assert '"clip_skip": 2' in made.json()["info"]
        # The interrupt it sends when the user aborts: a POST with no body at all.
        interrupt = client.post("/sdapi/v1/interrupt")
        assert interrupt.is_success, interrupt.text


def test_hires_fix_with_the_extension_s_own_values(frontend: Frontend) -> None:
    """The user ticks "Upscale" (`enable_hr`) and picks an upscaler from the list the
    extension built (`None` first, then the latent modes, then the rest); the rest are the
    extension's defaults: 2x, denoising 0.7, second-pass steps 0 (the first pass's)."""
    with sd(frontend) as client:
        upscalers = [x["name"] for x in client.get("/sdapi/v1/upscalers").json()]
        latent = [x["name"] for x in client.get("/sdapi/v1/latent-upscale-modes").json()]
        listed = [upscalers[0], *latent, *upscalers[1:]]
        for upscaler in ("Latent", listed[-1]):  # its default, and the last: a network
            body = generate_body(frontend, enable_hr=True, hr_upscaler=upscaler)
            made = client.post(
                "/sdapi/v1/txt2img", json=body, headers={"Content-Type": "application/json"}
            )
            assert made.is_success, made.text
            assert png(made.json()["images"][0]).size == (128, 128)
            assert f"Hires upscaler: {upscaler}" in made.json()["info"]
