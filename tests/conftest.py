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
from dataclasses import dataclass
from pathlib import Path

# Before anything imports bentoml: the store location is read once per process.
os.environ["BENTOML_HOME"] = tempfile.mkdtemp(prefix="imagegen-test-bentoml-")
os.environ["BENTOML_DO_NOT_TRACK"] = "true"

import httpx
import pytest

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


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Started once per session from the repo root, as the README does, and stopped after."""
    port = _free_port()
    log = tmp_path_factory.mktemp("server") / "bentoml-serve.log"
    env = {**os.environ, "IMAGEGEN_MAX_CONCURRENCY": str(SERVER_MAX_CONCURRENCY)}
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
