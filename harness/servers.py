"""Start a server process on a free loopback port, wait until it is ready, stop it after.
Used by the end-to-end tests and the benchmarks."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Server:
    url: str
    log: Path
    process: subprocess.Popen[bytes]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _wait_ready(server: Server, ready_path: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"the server exited:\n{server.log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{server.url}{ready_path}", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"not ready in {timeout}s:\n{server.log.read_text()[-3000:]}")


@contextmanager
def running(
    command: list[str],
    log: Path,
    *,
    env: dict[str, str] | None = None,
    ready_path: str = "/readyz",
    timeout: float = 180,
) -> Iterator[Server]:
    """``command`` (``{port}`` in it is replaced) run from the repo root; stopped on exit."""
    port = free_port()
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [part.replace("{port}", str(port)) for part in command],
            cwd=REPO,
            env={**os.environ, **(env or {})},
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = Server(url=f"http://127.0.0.1:{port}", log=log, process=process)
    try:
        _wait_ready(server, ready_path, timeout)
        yield server
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def bentoml_serve(
    log: Path, *, ready_path: str = "/readyz", **settings: str
) -> AbstractContextManager[Server]:
    """``bentoml serve`` as the README runs it, with ``IMAGEGEN_*`` settings on top."""
    env = {f"IMAGEGEN_{name.upper()}": value for name, value in settings.items()}
    command = ["bentoml", "serve", "--host", "127.0.0.1", "--port", "{port}"]
    return running(command, log, env=env, ready_path=ready_path)
