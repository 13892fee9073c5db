"""Shared fixtures. Every test session gets its own BentoML home, so tests never touch the
user's model store and always exercise the first-use build of the models they serve: ``sd-tiny``
(random weights, milliseconds an image) for the plumbing, unless a test asks for another."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

# Before anything imports bentoml: the store location is read once per process.
os.environ["BENTOML_HOME"] = tempfile.mkdtemp(prefix="imagegen-test-bentoml-")
os.environ["BENTOML_DO_NOT_TRACK"] = "true"
os.environ["IMAGEGEN_MODEL"] = "sd-tiny"  # the in-process app's and every server's model
# Auth is on for the in-process app and the session's server; tests send this key.
API_KEY = "test-key-0f9e8d7c6b5a"
OTHER_KEY = "test-key-second-1a2b3c"  # a second client, for what one key must not see
os.environ["IMAGEGEN_API_KEYS"] = f"{API_KEY},{OTHER_KEY}"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
# Prometheus' key for /metrics, on every server of the session.
METRICS_KEY = "test-metrics-key-4d3c"
os.environ["IMAGEGEN_METRICS_KEY"] = METRICS_KEY
METRICS_AUTH = {"Authorization": f"Bearer {METRICS_KEY}"}
OTHER_AUTH = {"Authorization": f"Bearer {OTHER_KEY}"}

import bentoml
import pytest
from playwright.sync_api import Browser, Page, Request, sync_playwright
from starlette.testclient import TestClient

import models.loading
from harness.servers import Server, bentoml_serve
from imagegen.engine.generation import PipelineRunner
from imagegen.engine.loading import LoadedModel, load_model
from imagegen.schemas import GenerationParameters
from imagegen.settings import Settings
from models.controlnets import CONTROL_RECIPES, ensure_controlnet
from models.recipes import RECIPES, SD_TINY
from models.store import ensure_built
from models.upscalers import ESRGAN_TINY_X2, ESRGAN_TINY_X4, ensure_upscaler

SERVER_MAX_CONCURRENCY = 4
# Parameters of one generation, for tests that need them but no pipeline.
PARAMETERS = GenerationParameters(
    prompt="a cat",
    negative_prompt="a dog",
    width=64,
    height=64,
    num_inference_steps=4,
    guidance_scale=7.5,
    seed=42,
    scheduler="euler",
    model="sd-tiny:v1",
)
MAX_BODY = Settings.model_fields["max_body_bytes"].default  # IMAGEGEN_MAX_BODY_BYTES' default
ARTIFACTS = Path(os.environ.get("IMAGEGEN_TEST_ARTIFACTS", "test-artifacts"))


@cache
def loaded_recipe(name: str) -> LoadedModel:
    """A recipe's model, loaded once per session the way the service loads it."""
    return load_model(ensure_built(RECIPES[name]))


TEST_UPSCALERS = (ESRGAN_TINY_X4, ESRGAN_TINY_X2)
TEST_CONTROLNETS = (
    "sd-shapes-control",
    "sd-tiny-control",
    "sdxl-tiny-control",
    "sd3-tiny-control",
    "flux-tiny-control",
)


@pytest.fixture(scope="session", autouse=True)
def upscalers_stored() -> list[bentoml.Model]:
    """The test upscalers (random ESRGAN networks, x4 and x2) in the session's store before
    any service starts: a generator finds the stored upscalers at start-up."""
    return [ensure_upscaler(recipe) for recipe in TEST_UPSCALERS]


@pytest.fixture(scope="session", autouse=True)
def controlnets_stored() -> list[bentoml.Model]:
    """The test ControlNets (sd-shapes' trained one, a tiny random one per family) in the
    session's store before any service starts: a generator finds them at start-up."""
    return [ensure_controlnet(CONTROL_RECIPES[name]) for name in TEST_CONTROLNETS]


@pytest.fixture(scope="session")
def tiny_model() -> LoadedModel:
    """``sd-tiny``, loaded once for the whole session the way the service loads it."""
    return loaded_recipe(SD_TINY.name)


@pytest.fixture
def runner(tiny_model: LoadedModel) -> PipelineRunner:
    return PipelineRunner(tiny_model)


@pytest.fixture(scope="session")
def artifacts() -> Iterator[Path]:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    yield ARTIFACTS


# Every from_pretrained while the in-process service runs, and those its start-up made: the
# load-once test counts them.
PIPELINE_LOADS: list[str] = []
STARTUP_LOADS: list[str] = []


@pytest.fixture(scope="session")
def client() -> Iterator[TestClient]:
    """The service's ASGI app (BentoML's, middlewares included), lifespan run, sending the key.

    One per session: BentoML registers its Prometheus metrics per app, so a second app in the
    same process would collide."""
    real = models.loading.AutoPipelineForText2Image.from_pretrained

    def counting_from_pretrained(path: Any, **kwargs: Any) -> Any:
        PIPELINE_LOADS.append(str(path))
        return real(path, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(
            models.loading.AutoPipelineForText2Image, "from_pretrained", counting_from_pretrained
        )
        from service import ImageGeneration

        with TestClient(ImageGeneration.to_asgi(), headers=AUTH) as test_client:
            STARTUP_LOADS.extend(PIPELINE_LOADS)
            yield test_client


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One real server for the session, auth on; one key may use every slot (the tests of
    the per-key limit have their own server)."""
    log = tmp_path_factory.mktemp("server") / "bentoml-serve.log"
    limit = str(SERVER_MAX_CONCURRENCY)
    with bentoml_serve(log, max_concurrency=limit, max_concurrency_per_key=limit) as running:
        yield running


CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--no-first-run",
]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Debian's headless Chromium, driven by Playwright (whose own browser is not used). Per
    module: while Playwright's sync API is open it holds an event loop on the main thread, and
    the tests that call `asyncio.run` must not run inside it."""
    if not Path(CHROMIUM).exists():
        if os.environ.get("IMAGEGEN_REQUIRE_BROWSER") == "1":
            pytest.fail(f"Chromium is required here but {CHROMIUM} is missing")
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS
        )
        yield launched
        launched.close()


def requests_outside(page: Page, origin: str) -> list[str]:
    """The URLs of every request ``page`` makes from now on to anywhere but ``origin``."""
    outside: list[str] = []

    def record(request: Request) -> None:
        # blob: and data: URLs are the page's own (images it made or was sent).
        is_network = request.url.startswith(("http:", "https:", "ws:", "wss:"))
        if is_network and not request.url.startswith(origin):
            outside.append(request.url)

    page.on("request", record)
    return outside


@pytest.fixture(scope="session")
def shapes_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server started as on a fresh machine: no model named, so the demo model, sd-shapes:
    what the tests of what images show use. BentoML puts its generator on TCP here, as where
    Unix sockets are not to be had, so its generations take BentoML's hop and adaptive
    batching (imagegen/direct_hop.py): the other servers' take the short way."""
    log = tmp_path_factory.mktemp("shapes-server") / "bentoml-serve.log"
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("IMAGEGEN_MODEL")  # the plumbing tests' sd-tiny
        patch.setenv("BENTOML_NO_UDS", "1")
        with bentoml_serve(log) as running:
            patch.undo()
            yield running


@pytest.fixture(scope="session")
def compat_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server for the OpenAI and AUTOMATIC1111 layers, auth on; batching off, so their
    images compare byte for byte with the native API's."""
    log = tmp_path_factory.mktemp("compat-server") / "bentoml-serve.log"
    with bentoml_serve(log, max_batch_size="1") as running:
        yield running


@pytest.fixture(scope="session")
def open_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A second server with auth off and a tight rate limit, per client address."""
    log = tmp_path_factory.mktemp("open-server") / "bentoml-serve.log"
    with bentoml_serve(log, api_keys="", rate_limit="3/minute", warmup="false") as running:
        yield running


# LibreChat's Stable Diffusion tool asks for 1024x1024 at 22 guided steps (46 units of work),
# more than the CPU default budget: the front-ends' servers allow it, as an operator would.
FRONTEND_WORK = "64"


@pytest.fixture(scope="session")
def frontends_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The front-ends' server with auth on."""
    log = tmp_path_factory.mktemp("frontends-server") / "bentoml-serve.log"
    with bentoml_serve(log, max_request_work=FRONTEND_WORK, warmup="false") as running:
        yield running


@pytest.fixture(scope="session")
def frontends_open_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The front-ends' server with auth off, as most people first run it."""
    log = tmp_path_factory.mktemp("frontends-open-server") / "bentoml-serve.log"
    with bentoml_serve(log, api_keys="", max_request_work=FRONTEND_WORK, warmup="false") as running:
        yield running


@dataclass(frozen=True)
class Frontend:
    """A server as a front-end is pointed at it: its URL and the key typed into the tool's
    settings ("" with auth off, where the tools send an empty header or none)."""

    url: str
    key: str

    @property
    def host(self) -> str:
        return self.url.removeprefix("http://")

    def url_with_credentials(self, user: str = "user") -> str:
        """The URL with `user:key@` in it, how a tool that has no auth field of its own
        (Dify's, text-generation-webui's) is given credentials: its HTTP library sends them
        as basic auth."""
        return f"http://{user}:{self.key}@{self.host}" if self.key else self.url


@pytest.fixture(params=["auth on", "auth off"])
def frontend(request: pytest.FixtureRequest) -> Frontend:
    if request.param == "auth on":
        return Frontend(request.getfixturevalue("frontends_server").url, API_KEY)
    return Frontend(request.getfixturevalue("frontends_open_server").url, "")
