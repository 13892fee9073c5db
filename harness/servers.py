"""Start a server process on a free loopback port, wait until it is ready, stop it after.
Used by the end-to-end tests and the benchmarks."""

from __future__ import annotations

import contextlib
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
import psutil

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
        stop(server)


def stop(server: Server, sig: signal.Signals = signal.SIGTERM, timeout: float = 30) -> None:
    """Send ``sig`` to the server's process group; with SIGKILL, to every process of its tree
    too (BentoML's workers outlive a killed arbiter otherwise). Kill what is left after
    ``timeout``."""
    if sig == signal.SIGKILL:
        with contextlib.suppress(psutil.NoSuchProcess):
            for process in psutil.Process(server.process.pid).children(recursive=True):
                with contextlib.suppress(psutil.NoSuchProcess):
                    process.kill()
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.process.pid, sig)
    try:
        server.process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.process.pid, signal.SIGKILL)
        server.process.wait()


def own_home(log: Path) -> Path:
    """A BENTOML_HOME for one server that shares the model store of this process's home.
    BentoML keeps its Prometheus files in BENTOML_HOME and clears them when a server starts,
    so servers running side by side (as replicas on their own machines would) need their
    own, or each start wipes the others' metrics."""
    shared = Path(os.environ.get("BENTOML_HOME", Path.home() / "bentoml")) / "models"
    shared.mkdir(parents=True, exist_ok=True)
    home = log.with_name(f"{log.stem}-bentoml-home")
    home.mkdir(exist_ok=True)
    if not (home / "models").exists():
        (home / "models").symlink_to(shared, target_is_directory=True)
    return home


def settings_env(settings: dict[str, str]) -> dict[str, str]:
    return {f"IMAGEGEN_{name.upper()}": value for name, value in settings.items()}


def failed_start(**settings: str) -> str:
    """The output of a ``bentoml serve`` with these settings that must exit by itself, as a
    bad setting makes it; raises if it exits 0."""
    result = subprocess.run(
        ["bentoml", "serve", "--host", "127.0.0.1", "--port", "0"],
        cwd=REPO,
        env={**os.environ, **settings_env(settings)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    if result.returncode == 0:
        raise AssertionError(f"bentoml serve exited 0 with {settings}")
    return result.stdout + result.stderr


def bentoml_serve(
    log: Path, *, ready_path: str = "/readyz", **settings: str
) -> AbstractContextManager[Server]:
    """``bentoml serve`` as the README runs it, with ``IMAGEGEN_*`` settings on top, in a
    BentoML home of its own (:func:`own_home`)."""
    env = {**settings_env(settings), "BENTOML_HOME": str(own_home(log))}
    command = ["bentoml", "serve", "--host", "127.0.0.1", "--port", "{port}"]
    return running(command, log, env=env, ready_path=ready_path)


@dataclass
class Redis:
    url: str
    process: subprocess.Popen[bytes]


@contextmanager
def redis_server(
    log: Path, timeout: float = 20, *, aof_dir: Path | None = None, port: int | None = None
) -> Iterator[Redis]:
    """Debian's ``redis-server`` on a loopback port (a free one unless given); stopped on exit.
    Nothing is persisted, unless ``aof_dir``: an append-only file there, fsynced each write, as
    the manifests' Redis keeps one (a restart on the same directory reads it back)."""
    import redis

    port = port or free_port()
    command = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    if aof_dir is None:
        command += ["--appendonly", "no"]
    else:
        command += ["--dir", str(aof_dir), "--appendonly", "yes", "--appendfsync", "always"]
    with log.open("wb") as sink:
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT)
    url = f"redis://127.0.0.1:{port}/0"
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                redis.Redis.from_url(url, socket_timeout=1).ping()
                break
            except redis.ConnectionError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not start:\n{log.read_text()}") from None
                time.sleep(0.1)
        yield Redis(url=url, process=process)
    finally:
        process.terminate()
        process.wait(timeout=10)
