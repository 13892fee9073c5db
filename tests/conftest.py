"""Shared fixtures. Every test session gets its own BentoML home, so tests never touch the
user's model store and always exercise the first-use build of ``sd-tiny``."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Before anything imports bentoml: the store location is read once per process.
os.environ["BENTOML_HOME"] = tempfile.mkdtemp(prefix="imagegen-test-bentoml-")
os.environ["BENTOML_DO_NOT_TRACK"] = "true"
# Auth is on for the in-process app and the session's server; tests send this key.
API_KEY = "test-key-0f9e8d7c6b5a"
os.environ["IMAGEGEN_API_KEYS"] = API_KEY
AUTH = {"Authorization": f"Bearer {API_KEY}"}

import httpx
import pytest
from starlette.testclient import TestClient

import models.loading
from imagegen.generation import ImageGenerator
from models.loading import LoadedModel, load_model
from models.store import ensure_embedded

REPO = Path(__file__).resolve().parents[1]
SERVER_MAX_CONCURRENCY = 4
ARTIFACTS = Path(os.environ.get("IMAGEGEN_TEST_ARTIFACTS", "test-artifacts"))


@pytest.fixture(scope="session")
def tiny_model() -> LoadedModel:
    """The embedded model, loaded once for the whole session the way the service loads it."""
    return load_model(ensure_embedded())


@pytest.fixture
def generator(tiny_model: LoadedModel) -> ImageGenerator:
    return ImageGenerator(tiny_model)


@pytest.fixture(scope="session")
def artifacts() -> Iterator[Path]:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    yield ARTIFACTS


# Every from_pretrained the in-process service does: the load-once test counts them.
PIPELINE_LOADS: list[str] = []


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
            yield test_client


@dataclass
class Server:
    """A real ``bentoml serve`` process on a free loopback port."""

    url: str
    log: Path
    process: subprocess.Popen[bytes]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _wait_ready(server: Server, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"bentoml serve exited:\n{server.log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{server.url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"not ready in {timeout}s:\n{server.log.read_text()[-3000:]}")


@contextmanager
def serving(log_dir: Path, **settings: str) -> Iterator[Server]:
    """``bentoml serve`` from the repo root, as the README does, with ``IMAGEGEN_*`` settings
    on top of the environment; stopped on exit."""
    port = _free_port()
    log = log_dir / "bentoml-serve.log"
    env = {**os.environ, **{f"IMAGEGEN_{name.upper()}": value for name, value in settings.items()}}
    with log.open("wb") as sink:
        process = subprocess.Popen(
            ["bentoml", "serve", "--host", "127.0.0.1", "--port", str(port)],
            cwd=REPO,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    running = Server(url=f"http://127.0.0.1:{port}", log=log, process=process)
    try:
        _wait_ready(running, timeout=180)
        yield running
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One real server for the session, auth on."""
    with serving(
        tmp_path_factory.mktemp("server"), max_concurrency=str(SERVER_MAX_CONCURRENCY)
    ) as running:
        yield running
